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


def ensure_distilled(workdir: str, config: str, teacher: str, *overrides: str):
    """``diffjax distill --config CONFIG --teacher TEACHER --workdir WORKDIR [overrides]`` unless
    WORKDIR has finished (its last checkpoint is the config's total_steps; a cut run resumes)."""
    ckpt = os.path.join(workdir, "checkpoints")
    done = os.path.join(workdir, "distill_done")
    if os.path.isfile(done):
        return
    print(f"distilling {teacher} with {config} into {workdir} ...", flush=True)
    subprocess.run([sys.executable, "-m", "diffjax.cli", "distill", "--config", config,
                    "--teacher", teacher, "--workdir", workdir, *overrides], check=True, cwd=ROOT)
    if os.path.isdir(ckpt):
        open(done, "w").close()
