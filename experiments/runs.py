"""What the experiment scripts share: train a config into a workdir unless it already has a
checkpoint (the scripts reuse runs across invocations)."""
from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ensure_trained(workdir: str, config: str, *overrides: str):
    """``diffjax train --config CONFIG --workdir WORKDIR [overrides]`` unless WORKDIR has a
    checkpoint already."""
    ckpt = os.path.join(workdir, "checkpoints")
    if os.path.isdir(ckpt) and os.listdir(ckpt):
        return
    print(f"training {config} into {workdir} ...", flush=True)
    subprocess.run([sys.executable, "-m", "diffjax.cli", "train", "--config", config, "--workdir",
                    workdir, *overrides], check=True, cwd=ROOT)
