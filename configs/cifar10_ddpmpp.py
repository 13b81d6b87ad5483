"""Class-conditional CIFAR-10 with a DDPM++-sized U-Net and EDM training (Karras et al. 2022).

    tfds build cifar10 --file_format=array_record          # once, where there is network
    diffjax train --config configs/cifar10_ddpmpp.py --workdir gs://bucket/cifar10 \
        [--config.data.data_dir=DIR]

Real-scale preset (run here only through a tiny-override smoke test). Follows EDM's CIFAR-10
recipe: U-Net with 128 channels, multipliers (2, 2, 2), 4 residual blocks per level, attention at
16x16, dropout 0.13, BigGAN up/down-sampling (~56M params; Song et al. 2021's DDPM++ layout in
this library's ADM blocks); Adam lr 1e-3 with a 10 Mimg ramp-up (~20k steps of 512), batch 512,
200 Mimg (~390k steps); EMA half-life 0.5 Mimg (decay 0.99929 per step) plus EDM2 power EMAs;
x-flips. Label dropout 0.1 adds classifier-free guidance (EDM trained without). Pure data
parallelism (the mesh puts every device on 'data'); sample with Heun, 18 steps (35 NFE).
"""
import ml_collections
from ml_collections import config_dict

from diffjax.training.config import base


def get_config(arg=None):
    c = base("ddpm_cifar10", num_classes=10, model_channels=128, channel_mult=(2, 2, 2),
             num_res_blocks=4, attn_resolutions=(16,), dropout=0.13, use_scale_shift_norm=True,
             resblock_updown=True)
    c.total_steps = 390_000
    c.batch_size = 512
    c.log_every = 500
    c.data = ml_collections.ConfigDict(dict(
        name="tfds", dataset="cifar10", split="train", data_dir=config_dict.placeholder(str),
        image_key="image", label_key="label", resolution=config_dict.placeholder(int), flip=True))
    c.diffusion.label_dropout = 0.1
    c.optim.lr = 1e-3
    c.optim.schedule = "constant"
    c.optim.warmup_steps = 20_000
    c.optim.grad_clip = 0.0
    c.ema.decays = (0.99929,)
    c.ema.power_stds = (0.05, 0.1)
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})
    c.checkpoint.every = 10_000
    c.checkpoint.keep = 5
    c.sample.every = 10_000
    c.sample.num = 100
    c.sample.sampler = "heun"
    c.sample.steps = 18
    c.sample.guidance.scale = 1.0
    c.sample.params = "decay_0.99929"
    c.eval.every = 50_000
    c.eval.num_samples = 10_000
    c.eval.sampler = "heun"
    c.eval.steps = 18
    c.eval.classifier = "classifier_small"
    c.eval.classifier_steps = 5_000
    return c
