"""Class-conditional EDM on 16x16 handwritten digits: the quickstart (2 CPU cores, a few minutes).

    diffjax train --config configs/digits.py --workdir /tmp/digits        # trains, then evaluates
    diffjax sample --workdir /tmp/digits --num 100 --sampler dpmpp_2m --steps 10 --guidance 3 \
        --out grid.png
    diffjax evaluate --workdir /tmp/digits

Data: scikit-learn's 1797 real 8x8 digits (first 1500 = train) resized to 16x16 in [-1, 1].
Model: a 3-level U-Net, 16 channels (x1, x2, x2), one residual block per level, no resampling
convolutions, a class table with 10 classes + the null class (~0.26M params).
Diffusion: EDM preconditioning and log-normal noise levels (Karras et al. 2022), label dropout 0.1
for classifier-free guidance; 1000 steps of batch 32 (21 epochs), Adam 2e-3 after a 100-step
warmup, then constant (as in EDM). On the 2-core CPU many small steps beat fewer large ones
(700 x 64: 78% accuracy), and in so short a run a constant rate beats a cosine decay to 0
(1000 x 32 cosine: 89%). Measured idle, clean clone: 160 s of training, 99.2% guided accuracy.
Sampling: DPM-Solver++(2M), 10 steps, guidance 3, EDM2 power-EMA params (sigma_rel 0.1).
Evaluation: 500 guided samples (50 per class); accuracy of a small classifier trained on the same
digits (at their native 8x8) and the Frechet distance in its feature space.
"""
from diffjax.training.config import base


def get_config(arg=None):
    c = base("unet_tiny16", input_shape=(16, 16, 1), num_classes=10, model_channels=16,
             channel_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(), conv_resample=False,
             num_head_channels=32)
    c.total_steps = 1000
    c.batch_size = 32
    c.log_every = 50
    c.data.name = "digits"
    c.data.split = "train"
    c.data.resolution = 16
    c.diffusion.label_dropout = 0.1
    c.optim.lr = 2e-3
    c.optim.schedule = "constant"
    c.optim.warmup_steps = 100
    c.ema.decays = (0.999,)
    c.ema.power_stds = (0.1,)
    c.checkpoint.every = 250
    c.sample.every = 0          # a grid at the end only (periodic grids cost a sampler run each)
    c.sample.num = 100
    c.sample.batch_size = 100
    c.sample.sampler = "dpmpp_2m"
    c.sample.steps = 10
    c.sample.guidance.scale = 3.0
    c.sample.params = "power_0.1"
    c.eval.num_samples = 500
    c.eval.sampler = "dpmpp_2m"
    c.eval.steps = 10
    c.eval.guidance.scale = 3.0
    c.eval.classifier = "classifier_tiny"
    c.eval.classifier_steps = 400
    c.eval.classifier_resolution = 8
    return c
