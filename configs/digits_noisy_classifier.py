"""A noise-conditioned classifier p(y | x, sigma) of the Quickstart's digits, for classifier guidance
(Dhariwal & Nichol 2021): the ADM encoder (preset ``noisy_classifier_tiny``: 32 channels x1, x2,
one residual block per level, attention at 8x8, attention pooling; 0.38M parameters) trained with
the ``noisy_classifier`` objective on the digits at EDM's log-normal noise levels. Attention
pooling matters here: with mean pooling and GroupNorm over <= 1 channel per group (32 groups, <= 32
channels) every channel is normalized over space, and its spatial mean carries almost no class
information (measured: 42% accuracy on nearly clean digits with mean pooling, 100% with attention
pooling, both after 300 steps).

    diffjax train --config configs/digits_noisy_classifier.py --workdir /tmp/digits_clf   # ~3 min
    diffjax sample --workdir /tmp/digits --guidance classifier \\
        --guidance.classifier_workdir /tmp/digits_clf --guidance.scale 2 --out clf.png
"""
from diffjax.training.config import base


def get_config(arg=None):
    c = base("noisy_classifier_tiny", input_shape=(16, 16, 1), num_classes=10)
    c.objective.name = "noisy_classifier"
    c.total_steps = 600
    c.batch_size = 64
    c.log_every = 50
    c.data.name = "digits"
    c.data.split = "train"
    c.data.resolution = 16
    c.diffusion.label_dropout = 0.0
    c.optim.lr = 2e-3
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 50
    c.ema.decays = (0.999,)
    c.ema.power_stds = ()
    c.checkpoint.every = 600
    c.sample.num = 0            # a classifier: nothing to sample or evaluate
    c.sample.params = "params"  # 600 steps: a 0.999 EMA would still weigh the initial weights
    c.eval.at_end = False
    return c
