"""The matched workload: one U-Net, one training step and three samplers, described once for both sides.

Pure Python (no jax, no torch): ``bench/peer_diffusers.py`` imports it inside the peer's virtualenv.

U-Net (32x32x3, channels (64, 128, 128), 2 res blocks per level, attention at 16x16 with 8-channel
heads, class-conditional with 10 classes + the null class):
    diffjax   UNet(model_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
              num_head_channels=8, use_scale_shift_norm=False, num_classes=10)
    diffusers UNet2DModel(block_out_channels=(64, 128, 128), layers_per_block=2,
              down_block_types=(Down, AttnDown, Down), up_block_types=(Up, AttnUp, Up),
              num_class_embeds=11)   (attention_head_dim defaults to 8)
Both are the DDPM block structure: additive time embedding, GroupNorm(32), stride-2 conv down-sampling,
nearest + conv up-sampling, a ResBlock-Attention-ResBlock middle, skip concatenation.
``diffusers_param_count`` counts the diffusers model analytically, following UNet2DModel's
constructor; running the peer (``peer_diffusers.py --count-params``) gave ``PEER_PARAM_COUNT``.
"""
from __future__ import annotations

NUM_CLASSES = 10
IMAGE = (32, 32, 3)                      # H, W, C (diffjax is channel-last; the peer uses NCHW)
TRAIN_BATCH = 32
SAMPLE_BATCH = 64
MAX_BATCH = 16                           # diffjax samples in network calls of <= 16 images (see BENCHMARKS.md)
TRAIN_SLICES = 2                         # diffjax's train-step gradient in this many batch slices
GUIDANCE_SCALE = 3.0                     # any value: it is a traced argument on the diffjax side
NUM_TRAIN_TIMESTEPS = 1000
LR = 1e-4

UNET = dict(model_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
            num_head_channels=8, use_scale_shift_norm=False, num_classes=NUM_CLASSES, dropout=0.0)

DIFFUSERS_UNET = dict(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(64, 128, 128),
                      layers_per_block=2,
                      down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                      num_class_embeds=NUM_CLASSES + 1, attention_head_dim=8, norm_num_groups=32)

# name -> (sampler, number of steps, classifier-free guidance); one network call per step (2B with CFG)
SAMPLERS = {
    "ddim50": ("ddim", 50, False),
    "ddim50_cfg": ("ddim", 50, True),
    "dpmpp20": ("dpmpp_2m", 20, False),
}
WORKLOADS = ("train",) + tuple(SAMPLERS)
DTYPES = ("float32", "bfloat16")

# The peer's environment: a Python with exactly these (BENCH_PEER_PYTHON names its interpreter;
# ``python -m bench.run --make-peer-env DIR`` makes one). torch's CPU build comes from PEER_INDEX.
PEER_REQUIREMENTS = ("torch==2.13.0", "diffusers==0.42.1")
PEER_INDEX = "https://download.pytorch.org/whl/cpu"

PEER_PARAM_COUNT = 6_475_011   # sum(p.numel()) of the UNet2DModel above (the PEER_REQUIREMENTS versions)


def diffusers_param_count(in_channels: int = 3, out_channels: int = 3,
                          block_out_channels=(64, 128, 128), layers_per_block: int = 2,
                          attn_levels=(1,), num_class_embeds: int = NUM_CLASSES + 1) -> int:
    """Parameters of diffusers' UNet2DModel built with the DDPM block types, counted by hand.

    time_embedding: Linear(c0, 4 c0), Linear(4 c0, 4 c0); class table (num_class_embeds, 4 c0);
    ResnetBlock2D(i, o): GN(i), conv3x3(i, o), Linear(4 c0, o), GN(o), conv3x3(o, o) [+ 1x1 shortcut];
    Attention(c): GN(c), q, k, v, out Linear(c, c); Downsample2D / Upsample2D: conv3x3(c, c).
    Up blocks see the skip channels the down path pushed (diffusers' res_skip_channels).
    """
    c0, temb = block_out_channels[0], 4 * block_out_channels[0]
    conv = lambda i, o, k=3: k * k * i * o + o
    lin = lambda i, o: i * o + o
    gn = lambda c: 2 * c

    def res(i, o):
        return gn(i) + conv(i, o) + lin(temb, o) + gn(o) + conv(o, o) + (conv(i, o, 1) if i != o else 0)

    def attn(c):
        return gn(c) + 4 * lin(c, c)

    n = lin(c0, temb) + lin(temb, temb) + num_class_embeds * temb + conv(in_channels, c0)
    skips, ch = [c0], c0
    last = len(block_out_channels) - 1
    for level, out in enumerate(block_out_channels):
        for _ in range(layers_per_block):
            n += res(ch, out) + (attn(out) if level in attn_levels else 0)
            ch = out
            skips.append(ch)
        if level != last:
            n += conv(ch, ch)
            skips.append(ch)
    n += 2 * res(ch, ch) + attn(ch)
    for level, out in reversed(list(enumerate(block_out_channels))):
        for _ in range(layers_per_block + 1):
            n += res(ch + skips.pop(), out) + (attn(out) if level in attn_levels else 0)
            ch = out
        if level != 0:
            n += conv(ch, ch)
    return n + gn(ch) + conv(ch, out_channels)
