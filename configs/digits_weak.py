"""The weak model for autoguidance of the Quickstart (Karras et al. 2024): the same task, data and
conditioning as configs/digits.py, a smaller network (8 channels, x1, x2, x2; ~4x fewer parameters)
trained for 1/8 of the steps. The paper's guides are one size smaller and ~1/16 of the training.

    diffjax train --config configs/digits_weak.py --workdir /tmp/digits_weak       # ~1 min
    diffjax sample --workdir /tmp/digits --guidance auto --guidance.weak_workdir /tmp/digits_weak \
        --guidance.scale 2 --out auto.png

``--config configs/digits_weak.py:shapes16`` makes the weak model of configs/shapes16.py instead.
"""
from diffjax.training.config import sibling


def get_config(arg=None):
    if arg not in (None, "", "digits", "shapes16"):
        raise ValueError(f"configs/digits_weak.py:{arg}: the weak model of digits or shapes16")
    c = sibling(__file__, f"{arg or 'digits'}.py")
    c.model.model_channels = 8
    c.model.num_head_channels = 8
    c.total_steps = c.total_steps // 8
    c.optim.warmup_steps = 25
    c.checkpoint.every = c.total_steps
    c.sample.num = 0           # the weak model is only a guide: no grid, no evaluation
    c.eval.at_end = False
    return c
