"""Training throughput side by side: batch-32 AdamW steps on the eps-MSE, diffjax vs the peer.

    python -m bench.train [--dtypes float32,bfloat16] [--reps 5] [--iters 2] [--no-peer]

Prints the table and one JSON line (see bench/run.py for the options).
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import run  # noqa: E402

if __name__ == "__main__":
    run.main(workloads=("train",), doc=__doc__)
