"""A small class-conditional DiT on the Quickstart digits (16x16): the base run of the DeeDiff
early-exit experiment (configs/distill_deediff.py, experiments/deediff_digits.py).

    diffjax train --config configs/digits_dit.py --workdir /tmp/digits_dit

Model: DiT (Peebles & Xie 2023) with patch 2 (64 tokens), width 96, 6 adaLN-Zero blocks, 4 heads,
10 classes + the null class (1.06M params, 0.33M of them the blocks' adaLN modulations).
Everything else is configs/digits.py's recipe (EDM preconditioning and noise levels, label dropout
0.1, DPM-Solver++(2M) 10 steps at guidance 3, the same evaluation classifier), with a lower peak
rate (1e-3: a transformer does not take the U-Net's 2e-3) and 1000 steps of batch 32 (~5 minutes
on the 2-core CPU).
"""
from diffjax.models.registry import get_preset
from diffjax.training.config import sibling


def get_config(arg=None):
    c = sibling(__file__, "digits.py", arg)
    c.model = get_preset("dit_tiny")
    c.model.update(dict(input_shape=(16, 16, 1), num_classes=10, patch_size=2, hidden_size=96,
                        depth=6, num_heads=4))
    c.total_steps = 1000
    c.optim.lr = 1e-3
    c.checkpoint.every = 500
    return c
