"""Sampling throughput side by side: 64 images with DDIM 50, DDIM 50 + CFG and DPM-Solver++(2M) 20.

    python -m bench.sample [--workloads ddim50,ddim50_cfg,dpmpp20] [--dtypes float32] [--reps 5]

Prints the table and one JSON line (see bench/run.py for the options).
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import run, spec  # noqa: E402

if __name__ == "__main__":
    run.main(workloads=tuple(spec.SAMPLERS), doc=__doc__)
