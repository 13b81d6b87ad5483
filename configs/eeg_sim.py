"""Class-conditional multichannel signals with classifier-free guidance: 4-channel, 1 s EEG-like
windows at 128 Hz whose class is the dominant rhythm (theta 6 Hz, alpha 10 Hz, beta 20 Hz), from
diffjax.timeseries.signals' documented simulator (no multichannel dataset ships with the installed
packages).

    diffjax train  --config configs/eeg_sim.py --workdir /tmp/eeg
    python experiments/eeg_cfg.py --workdir_root /tmp/diffjax_exp     # band distances vs w

Model: the 1-D U-Net (3 levels, 32 channels, 0.54M params) on (128, 4) windows, 3 classes + the
null class; label dropout 0.1 for guidance. Diffusion: EDM. 2000 steps of batch 32, Adam 1e-3.
"""
import ml_collections

from diffjax.training.config import base


def get_config(arg=None):
    c = base("unet1d_small", input_shape=(128, 4), model_channels=32, channel_mult=(1, 2, 2),
             num_res_blocks=1, attn_resolutions=(), num_head_channels=32, mask_channels=0,
             num_classes=3)
    c.total_steps = 2000
    c.batch_size = 32
    c.log_every = 100
    c.data = ml_collections.ConfigDict(dict(name="eeg_sim", num=1200, classes=3, channels=4,
                                            length=128, split="train"))
    c.diffusion.label_dropout = 0.1
    c.optim.lr = 1e-3
    c.optim.schedule = "constant"
    c.optim.warmup_steps = 100
    c.ema.decays = (0.999,)
    c.ema.power_stds = ()
    c.checkpoint.every = 1000
    c.sample.every = 0
    c.sample.num = 0
    c.sample.sampler = "dpmpp_2m"
    c.sample.steps = 20
    c.sample.params = "decay_0.999"
    c.eval.at_end = False
    return c
