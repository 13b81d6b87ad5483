"""TSDiff (Kollovieh et al. 2023) on the yearly sunspot numbers (statsmodels' bundled series): one
unconditional model over (context + horizon) windows, then self-guided forecasts, refinement and
train-on-synthetic (diffjax/timeseries; diffjax forecast).

    diffjax train    --config configs/timeseries_sunspots.py --workdir /tmp/sunspots
    diffjax forecast --workdir /tmp/sunspots --num_samples 32 --guidance.scale 4

Data: 309 yearly values 1700-2008; the last 4 x 12 years are the test targets (rolling origins,
context 44 = four solar cycles); 206 training windows of 56 years, each divided by the mean
absolute value of its context (the paper's mean scaling).
Model: the 1-D U-Net (3 levels, 32 channels, 0.54M params) on (56, 1) windows, no observed-mask
input (the model is unconditional: forecasts come from guidance).
Diffusion: TSDiff's DDPM process, T = 100 steps, linear betas 1e-4 .. 0.1, eps prediction.
Training: 3000 steps of batch 64, Adam 1e-3, gradient clip 0.5 (the paper's).
"""
import ml_collections

from diffjax.training.config import base


def get_config(arg=None):
    c = base("unet1d_small", input_shape=(56, 1), model_channels=32, channel_mult=(1, 2, 2),
             num_res_blocks=1, attn_resolutions=(), num_head_channels=32, mask_channels=0)
    c.total_steps = 3000
    c.batch_size = 64
    c.log_every = 100
    c.data = ml_collections.ConfigDict(dict(name="series", series="sunspots", context=44,
                                            horizon=12, test_windows=4, scaling="mean"))
    c.diffusion.process = "vp_discrete"
    c.diffusion.process_kwargs = ml_collections.ConfigDict(
        dict(num_train_steps=100, beta_start=1e-4, beta_end=0.1))
    c.diffusion.parameterization = "eps"
    c.diffusion.t_sampler = "uniform"
    c.optim.lr = 1e-3
    c.optim.schedule = "constant"
    c.optim.warmup_steps = 100
    c.optim.grad_clip = 0.5
    c.ema.decays = (0.999,)
    c.ema.power_stds = ()
    c.checkpoint.every = 1000
    c.sample.every = 0
    c.sample.num = 0
    c.sample.sampler = "ddim"
    c.sample.steps = 50
    c.sample.spacing = "linspace"
    c.sample.params = "decay_0.999"
    c.eval.at_end = False
    return c
