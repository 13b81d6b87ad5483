"""Inverse problems with a diffusion prior: forward operators (operators.py), measurement-guided
denoisers - steered diffusion and DPS - (steering.py), and ``restore`` over a trained run
(restore.py). docs/INVERSE.md.

    from diffjax.inverse import operators, steering, restore
    op = operators.make("sr", (16, 16, 1), factor=2)
    D2 = steering.steer(D, op)                # D(x, sigma, cond) with cond['measurement'] = y
    out = restore.restore(run, images, "inpaint", method="dps", steps=18)
"""
from diffjax.inverse import operators, steering
from diffjax.inverse.operators import OPERATORS, Operator, baseline, make

__all__ = ["OPERATORS", "Operator", "baseline", "make", "operators", "steering"]
