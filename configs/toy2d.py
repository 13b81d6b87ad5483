"""Unconditional EDM on a 2-D toy distribution (default: a mixture of 8 Gaussians on a circle).

    diffjax train --config configs/toy2d.py --workdir /tmp/toy
    diffjax sample --workdir /tmp/toy --num 5000 --out toy.png     # a density picture

Points (B, 2) are fed to the 1-D U-Net as a length-2 sequence of one channel. Evaluation reports the
Frechet distance between generated and data points in the plane (no classifier).
Variants: --config.data.toy=gmm_25 or swiss_roll.
"""
from diffjax.training.config import base


def get_config(arg=None):
    c = base("unet1d_tiny", input_shape=(2,), model_channels=64, channel_mult=(1,),
             num_res_blocks=2, mask_channels=0, attn_resolutions=())
    c.total_steps = 3000
    c.batch_size = 256
    c.log_every = 100
    c.data = c.data.__class__(dict(name="toy2d", toy="gmm_8", num_examples=10_000, seed=0,
                                   flip=False))
    c.diffusion.sigma_data = 1.0
    c.optim.lr = 1e-3
    c.checkpoint.every = 1000
    c.sample.num = 2000
    c.sample.sampler = "heun"
    c.sample.steps = 18
    c.sample.params = "power_0.1"
    c.eval.num_samples = 5000
    c.eval.sampler = "heun"
    c.eval.steps = 18
    return c
