"""An off-the-shelf classifier of the Quickstart's digits, trained on clean images only: a small
ReLU ResNet (preset ``classifier_relu16``: 32 and 64 channels, one residual block per level, 16x16x1;
no noise-level input), the kind of network EluCD (Ma et al. 2024), GFCG (Shenoy et al. 2024) and
PPAP (Go et al. 2023) guide with. It is a different network from the evaluation classifier (which
sees 8x8 digits, SiLU, trained with pixel noise), so guidance toward it is not guidance toward the
metric.

    diffjax train --config configs/digits_clean_classifier.py --workdir /tmp/digits_clean   # ~1 min
    diffjax sample --workdir /tmp/digits --guidance elucd \\
        --guidance.classifier_workdir /tmp/digits_clean --guidance.scale 1 --out elucd.png

``--config configs/digits_clean_classifier.py:shapes16`` trains the same network on the shapes of
configs/shapes16.py (24 classes, 16x16 RGB).
"""
from diffjax.training.config import base


def get_config(arg=None):
    if arg not in (None, "", "digits", "shapes16"):
        raise ValueError(f"configs/digits_clean_classifier.py:{arg}: digits or shapes16")
    shapes = arg == "shapes16"
    c = base("classifier_relu16", input_shape=(16, 16, 3) if shapes else (16, 16, 1),
             num_classes=24 if shapes else 10)
    c.objective.name = "clean_classifier"
    c.total_steps = 400
    c.batch_size = 64
    c.log_every = 50
    if shapes:
        c.data = c.data.__class__(dict(name="shapes", num_examples=10_000, seed=0, resolution=16,
                                       flip=False))
    else:
        c.data.name = "digits"
        c.data.split = "train"
        c.data.resolution = 16
    c.diffusion.label_dropout = 0.0
    c.optim.lr = 2e-3
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 40
    c.ema.decays = (0.999,)
    c.ema.power_stds = ()
    c.checkpoint.every = 400
    c.sample.num = 0            # a classifier: nothing to sample or evaluate
    c.sample.params = "params"
    c.eval.at_end = False
    return c
