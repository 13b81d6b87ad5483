"""diffusers ``PixArtTransformer2DModel`` (PixArt-alpha, Chen et al. 2024; PixArt-Sigma) -> ``pixart``.

    diffusers                                          diffjax (models/pixart.py)
    pos_embed.proj (Conv2d D x C x p x p, stride p)    x_embedder: Dense over "(p q c)" patches
    pos_embed.pos_embed (buffer, when saved)           sincos_2d with pe_scale = interpolation_scale
    adaln_single.emb.timestep_embedder.linear_1 / _2   t_embedder/fc1 / fc2 (freq_shift 0)
    adaln_single.emb.resolution_embedder, aspect_...   resolution_embedder, aspect_ratio_embedder
                                                         (micro_conditions: the 1024 models)
    adaln_single.linear (6D)                           t_block: adaLN-single, one for all blocks
    caption_projection.linear_1 / linear_2             caption_fc1 / caption_fc2 (GELU tanh)
    transformer_blocks.i.scale_shift_table (6 x D)     block_i/scale_shift_table
    transformer_blocks.i.attn1.to_q / to_k / to_v      block_i/attn/qkv: [q | k | v], heads "(h d)"
    transformer_blocks.i.attn1.to_out.0                block_i/attn/proj
    transformer_blocks.i.attn2.to_q / [to_k | to_v]    block_i/cross_attn/q / kv
    transformer_blocks.i.attn2.to_out.0                block_i/cross_attn/proj
    transformer_blocks.i.ff.net.0.proj / ff.net.2      block_i/mlp/fc1 / fc2
    scale_shift_table (2 x D), proj_out                final_layer/scale_shift_table, linear

The network's inputs are diffusers' ``hidden_states`` (NHWC here), ``timestep`` t in [0, 999] (the
'vp_discrete' noise label), ``encoder_hidden_states`` as ``context`` (B, M, caption_channels: T5
tokens) and ``encoder_attention_mask`` as ``context_mask``. A diffusers checkpoint holds no null
caption (its pipeline encodes the empty prompt with T5), so the converted ``null_context`` (the
sequence ``context=None`` uses) is zeros of ``context_len`` = 120 tokens: pass T5 embeddings as
``context`` for text-to-image sampling (``inference.generate(..., context=...)`` or the model).
``interpolation_scale`` None is diffusers' max(sample_size // 64, 1); ``use_additional_conditions``
None is sample_size == 128 (PixArt-XL-2-1024-MS), which diffjax's ``micro_conditions`` computes
from the latent's size (x 8 pixels) as the pipeline does.
"""
from __future__ import annotations

import numpy as np

from diffjax.convert.state_dict import (ConvertError, StateDict, config_with_defaults,
                                        learned_sigma)

CLASS_NAME = "PixArtTransformer2DModel"
NULL_CONTEXT_LEN = 120          # PixArt-alpha's T5 sequence length (Sigma's pipeline uses 300)
_FIELDS = {
    "num_attention_heads": None, "attention_head_dim": None, "in_channels": None,
    "out_channels": None, "num_layers": None, "dropout": None, "norm_num_groups": None,
    "cross_attention_dim": None, "attention_bias": True, "sample_size": None, "patch_size": None,
    "activation_fn": "gelu-approximate", "num_embeds_ada_norm": None, "upcast_attention": None,
    "norm_type": "ada_norm_single", "norm_elementwise_affine": False, "norm_eps": 1e-6,
    "interpolation_scale": None, "use_additional_conditions": None, "caption_channels": None,
    "attention_type": "default",
}
_DEFAULTS = {"num_attention_heads": 16, "attention_head_dim": 72, "in_channels": 4,
             "out_channels": 8, "num_layers": 28, "dropout": 0.0, "cross_attention_dim": 1152,
             "sample_size": 128, "patch_size": 2, "interpolation_scale": None,
             "use_additional_conditions": None, "caption_channels": None}


def _cfg(hf: dict) -> dict:
    return config_with_defaults(hf, _FIELDS, _DEFAULTS, CLASS_NAME)


def model_config(hf: dict) -> dict:
    """The diffjax ``pixart`` model fields of a diffusers PixArt config.json."""
    c = _cfg(hf)
    cin = int(c["in_channels"])
    learn_sigma = learned_sigma(CLASS_NAME, cin, c["out_channels"])
    heads, d = int(c["num_attention_heads"]), int(c["num_attention_heads"]) * int(
        c["attention_head_dim"])
    if c["caption_channels"] is None:
        raise ConvertError(f"{CLASS_NAME}: caption_channels is null (no caption projection); "
                           f"diffjax's PixArt projects T5 tokens of width caption_channels")
    if c["cross_attention_dim"] is not None and int(c["cross_attention_dim"]) != d:
        raise ConvertError(f"{CLASS_NAME}: cross_attention_dim = {c['cross_attention_dim']} differs "
                           f"from the width {d}: diffjax's PixArt attends to projected captions of "
                           f"the model's width")
    size, p = int(c["sample_size"]), int(c["patch_size"])
    if size % p:
        raise ConvertError(f"{CLASS_NAME}: sample_size {size} is not divisible by patch_size {p}")
    interp = c["interpolation_scale"]
    interp = float(max(size // 64, 1) if interp is None else interp)
    micro = c["use_additional_conditions"]
    micro = (size == 128) if micro is None else bool(micro)
    return dict(name="pixart", input_shape=(size, size, cin), patch_size=p, hidden_size=d,
                depth=int(c["num_layers"]), num_heads=heads, mlp_ratio=4.0,
                context_dim=int(c["caption_channels"]), context_len=NULL_CONTEXT_LEN,
                num_classes=0, learn_sigma=learn_sigma, dropout=float(c["dropout"]), freq_dim=256,
                pe_scale=interp, micro_conditions=micro)


def _embedder(sd: StateDict, prefix: str, n_in: int, n_out: int) -> dict:
    return {"fc1": sd.linear(prefix + ".linear_1", n_in, n_out),
            "fc2": sd.linear(prefix + ".linear_2", n_out, n_out)}


def convert(hf: dict, sd: StateDict) -> dict:
    """Params of the per-block (``block_i``) layout; ``models.scan.to_model`` stacks them for a
    scanned model."""
    from diffjax.models.embeddings import sincos_2d

    mc = model_config(hf)
    d, depth, p = mc["hidden_size"], mc["depth"], mc["patch_size"]
    size, _, cin = mc["input_shape"]
    out_ch = cin * (2 if mc["learn_sigma"] else 1)
    w = sd.take("pos_embed.proj.weight", (d, cin, p, p))
    params = {"x_embedder": {"kernel": w.transpose(2, 3, 1, 0).reshape(p * p * cin, d),
                             "bias": sd.take("pos_embed.proj.bias", (d,))}}
    if sd.has("pos_embed.pos_embed"):
        g = size // p
        table = sd.take("pos_embed.pos_embed", (1, g * g, d))[0]
        ours = np.asarray(sincos_2d(g, g, d, mc["pe_scale"]))
        if not np.allclose(table, ours, atol=1e-5):
            raise ConvertError(f"{CLASS_NAME}: pos_embed.pos_embed is not the sin-cos table of a "
                               f"{g}x{g} grid at interpolation_scale {mc['pe_scale']} (max "
                               f"difference {np.abs(table - ours).max():.3g})")
    emb = "adaln_single.emb."
    params["t_embedder"] = _embedder(sd, emb + "timestep_embedder", 256, d)
    if mc["micro_conditions"]:
        for n in ("resolution_embedder", "aspect_ratio_embedder"):
            params[n] = _embedder(sd, emb + n, 256, d // 3)
    params["t_block"] = sd.linear("adaln_single.linear", d, 6 * d)
    params["caption_fc1"] = sd.linear("caption_projection.linear_1", mc["context_dim"], d)
    params["caption_fc2"] = sd.linear("caption_projection.linear_2", d, d)
    params["null_context"] = np.zeros((mc["context_len"], mc["context_dim"]), np.float32)
    for i in range(depth):
        b = f"transformer_blocks.{i}."
        q, k, v = (sd.linear(b + f"attn1.to_{n}", d, d) for n in "qkv")
        cq, ck, cv = (sd.linear(b + f"attn2.to_{n}", d, d) for n in "qkv")
        params[f"block_{i}"] = {
            "scale_shift_table": sd.take(b + "scale_shift_table", (6, d)),
            "attn": {"qkv": {"kernel": np.concatenate([q["kernel"], k["kernel"], v["kernel"]], 1),
                             "bias": np.concatenate([q["bias"], k["bias"], v["bias"]])},
                     "proj": sd.linear(b + "attn1.to_out.0", d, d)},
            "cross_attn": {"q": cq,
                           "kv": {"kernel": np.concatenate([ck["kernel"], cv["kernel"]], 1),
                                  "bias": np.concatenate([ck["bias"], cv["bias"]])},
                           "proj": sd.linear(b + "attn2.to_out.0", d, d)},
            "mlp": {"fc1": sd.linear(b + "ff.net.0.proj", d, 4 * d),
                    "fc2": sd.linear(b + "ff.net.2", 4 * d, d)},
        }
    params["final_layer"] = {"scale_shift_table": sd.take("scale_shift_table", (2, d)),
                             "linear": sd.linear("proj_out", d, p * p * out_ch)}
    sd.finish()
    return params
