"""Class-conditional ImageNet 256x256 with DiT-XL/2 on 32x32x4 VAE latents (Peebles & Xie 2023).

    diffjax train --config configs/imagenet256_dit_xl2.py --workdir gs://bucket/dit \
        --config.data.path=/data/imagenet256_latents.npz

Real-scale preset (run here only through a tiny-override smoke test). DiT's recipe: 675M params
(28 blocks, width 1152, 16 heads, patch 2), DDPM's discrete linear-beta process with 1000 steps,
eps prediction with the plain eps-MSE (learned sigma is left out), AdamW lr 1e-4 constant, no weight
decay, batch 256, EMA 0.9999, label dropout 0.1; sample with classifier-free guidance (1.5 for FID,
4 for pictures). Compute in bf16 with float32 master weights and optimizer state; params, Adam
moments and EMA are sharded FSDP-style (mesh fsdp='auto': the largest fsdp size that shards every
matrix, the rest of the devices data-parallel; set e.g. --config.mesh.fsdp=64 to choose). The 28
blocks run as one scanned, rematerialized block (model.scan_layers, model.remat). Data, either:
- the latent pipeline (diffjax/latent): ImageNet images and the SD VAE converted with
  ``diffjax convert --from diffusers sd-vae-ft-ema --workdir sd_vae``, then
      diffjax encode --config configs/imagenet256_dit_xl2.py --workdir W --config.latent.vae=sd_vae \
          --config.data.name=folder --config.data.path=/data/imagenet/train \
          --config.data.resolution=256 --config.data.flip=True
  and ``diffjax train`` with the same flags (samples decode through the VAE); or
- an .npz of latents encoded elsewhere (``images`` (N, 32, 32, 4) float in [-1, 1] -- scale the
  SD-VAE latents into that range, e.g. latents * 0.18215 / 4 -- and ``labels`` (N,)).
"""
import ml_collections
from ml_collections import config_dict

from diffjax.training.config import base


def get_config(arg=None):
    c = base("dit_xl_2", num_classes=1000, dtype="bfloat16", param_dtype="float32")
    c.total_steps = 400_000
    c.batch_size = 256
    c.log_every = 100
    c.data = ml_collections.ConfigDict(dict(name="npz", path=config_dict.placeholder(str),
                                            resolution=config_dict.placeholder(int), flip=False))
    c.diffusion.process = "vp_discrete"
    c.diffusion.parameterization = "eps"
    c.diffusion.weighting = "native"
    c.diffusion.t_sampler = "uniform"
    c.diffusion.label_dropout = 0.1
    c.optim.lr = 1e-4
    c.optim.schedule = "constant"
    c.optim.warmup_steps = 0
    c.optim.weight_decay = 0.0
    c.optim.grad_clip = 0.0
    c.ema.decays = (0.9999,)
    c.ema.power_stds = (0.05,)
    c.mesh.data, c.mesh.fsdp = -1, "auto"   # the largest fsdp size sharding every matrix
    c.model.scan_layers = True               # one compiled block instead of 28
    # scanned blocks keep every residual without remat (55.6 GiB of temporaries at 64 examples
    # per v5p chip); this policy keeps the weight matmuls: 13.4 GiB at 1.01x the FLOPs ('full':
    # 4.7 GiB at 1.33x; docs/SCALING.md)
    c.model.remat = "dots_with_no_batch_dims_saveable"
    c.sharding.min_size = 2 ** 18
    c.checkpoint.every = 10_000
    c.checkpoint.keep = 3
    c.sample.every = 20_000
    c.sample.num = 64
    c.sample.sampler = "ddim"
    c.sample.steps = 50
    c.sample.spacing = "trailing"
    c.sample.guidance.scale = 4.0
    c.sample.params = "decay_0.9999"
    c.eval.every = 0
    c.eval.at_end = False
    c.eval.num_samples = 10_000
    c.eval.sampler = "ddim"
    c.eval.steps = 50
    c.eval.guidance.scale = 1.5
    c.eval.classifier = "classifier_small"
    return c
