"""The Quickstart's recipe on procedurally generated shapes at 16x16 RGB (4 shapes x 6 colours = 24
classes): a second small data set for the guidance experiments (experiments/guidance_sweep.py
--data shapes16). Needs no download; the same 16-channel U-Net as configs/digits.py.

    diffjax train --config configs/shapes16.py --workdir /tmp/shapes16                    # ~3 min
    diffjax sample --workdir /tmp/shapes16 --num 96 --guidance 3 --out shapes16.png
"""
from diffjax.training.config import sibling


def get_config(arg=None):
    c = sibling(__file__, "digits.py", arg)
    c.model.input_shape = (16, 16, 3)
    c.model.num_classes = 24
    c.data = c.data.__class__(dict(name="shapes", num_examples=10_000, seed=0, resolution=16,
                                   flip=False))
    c.total_steps = 1500
    c.sample.num = 96
    c.sample.batch_size = 96
    c.eval.classifier_resolution = 16
    return c
