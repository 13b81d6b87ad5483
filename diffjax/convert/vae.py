"""diffusers ``AutoencoderKL`` checkpoints -> ``diffjax.models.autoencoder.AutoencoderKL`` params.

``model_config(hf_config)`` maps config.json to AutoencoderKL's fields; ``convert(hf_config, sd)``
returns the numpy params tree of ``AutoencoderKL.init`` exactly (keys ``encoder.*``, ``quant_conv``,
``post_quant_conv``, ``decoder.*``; layouts and legacy attention names as in ``convert/unet2d.py``,
whose block helpers this uses) and ends with ``sd.finish()``. Only the block types every KL VAE
uses are converted (DownEncoderBlock2D, UpDecoderBlock2D); ``latents_mean`` / ``latents_std``
(a per-channel latent normalization some pipelines apply) are refused unless null; ``shift_factor``
null means 0.
"""
from __future__ import annotations

from diffjax.convert.state_dict import ConvertError, StateDict, check_fields
from diffjax.convert.unet2d import ACT_FNS, check_class, down_block, mid_block, up_block

CLASS_NAME = "AutoencoderKL"
DOWN_BLOCK, UP_BLOCK = "DownEncoderBlock2D", "UpDecoderBlock2D"
DEFAULTS = {  # diffusers AutoencoderKL.__init__ defaults
    "in_channels": 3, "out_channels": 3, "down_block_types": (DOWN_BLOCK,),
    "up_block_types": (UP_BLOCK,), "block_out_channels": (64,), "layers_per_block": 1,
    "act_fn": "silu", "latent_channels": 4, "norm_num_groups": 32, "sample_size": 32,
    "scaling_factor": 0.18215, "shift_factor": None, "latents_mean": None, "latents_std": None,
    "force_upcast": True, "use_quant_conv": True, "use_post_quant_conv": True,
    "mid_block_add_attention": True,
}
KNOWN = {k: None for k in DEFAULTS}
KNOWN["act_fn"] = ACT_FNS


def model_config(hf_config: dict) -> dict:
    """AutoencoderKL's fields from a diffusers AutoencoderKL config.json (module docstring)."""
    check_class(hf_config, CLASS_NAME)
    check_fields(hf_config, KNOWN, CLASS_NAME)
    cfg = {**DEFAULTS, **{k: v for k, v in hf_config.items() if not k.startswith("_")}}
    for k in ("latents_mean", "latents_std"):
        if cfg[k] is not None:
            raise ConvertError(f"{CLASS_NAME}: config.json field {k!r} is set: per-channel latent "
                               f"normalization is not supported (diffjax scales latents by "
                               f"scaling_factor and shift_factor only)")
    chans = tuple(int(c) for c in cfg["block_out_channels"])
    for field, want in (("down_block_types", DOWN_BLOCK), ("up_block_types", UP_BLOCK)):
        bad = [t for t in cfg[field] if t != want]
        if bad:
            raise ConvertError(f"{CLASS_NAME}: config.json field {field!r} holds {bad[0]!r}, "
                               f"which is not supported (diffjax converts {want})")
        if len(cfg[field]) != len(chans):
            raise ConvertError(f"{CLASS_NAME}: {len(cfg[field])} {field} for {len(chans)} "
                               f"block_out_channels: config.json needs one per level")
    return dict(
        in_channels=int(cfg["in_channels"]), out_channels=int(cfg["out_channels"]),
        block_out_channels=chans, layers_per_block=int(cfg["layers_per_block"]),
        latent_channels=int(cfg["latent_channels"]), norm_num_groups=int(cfg["norm_num_groups"]),
        scaling_factor=float(cfg["scaling_factor"]),
        shift_factor=float(cfg["shift_factor"] or 0.0),
        use_quant_conv=bool(cfg["use_quant_conv"]),
        use_post_quant_conv=bool(cfg["use_post_quant_conv"]),
        mid_block_add_attention=bool(cfg["mid_block_add_attention"]),
        force_upcast=bool(cfg["force_upcast"]),
    )


def convert(hf_config: dict, sd: StateDict) -> dict:
    """The AutoencoderKL params tree (numpy) of a diffusers AutoencoderKL state dict."""
    cfg = model_config(hf_config)
    chans, n, layers = cfg["block_out_channels"], len(cfg["block_out_channels"]), \
        cfg["layers_per_block"]
    lat, attn = cfg["latent_channels"], cfg["mid_block_add_attention"]

    enc = {"conv_in": sd.conv("encoder.conv_in", cfg["in_channels"], chans[0], 3)}
    c_out = chans[0]
    for i in range(n):
        c_in, c_out = c_out, chans[i]
        enc[f"down_blocks_{i}"] = down_block(sd, f"encoder.down_blocks.{i}", c_in, c_out, layers,
                                             False, None, "conv" if i < n - 1 else None)
    enc["mid_block"] = mid_block(sd, "encoder.mid_block", chans[-1], chans[-1], attn, True)
    enc["conv_norm_out"] = sd.norm("encoder.conv_norm_out", chans[-1])
    enc["conv_out"] = sd.conv("encoder.conv_out", chans[-1], 2 * lat, 3)

    dec = {"conv_in": sd.conv("decoder.conv_in", lat, chans[-1], 3),
           "mid_block": mid_block(sd, "decoder.mid_block", chans[-1], chans[-1], attn, True)}
    c_out = chans[-1]
    for i, c in enumerate(reversed(chans)):
        c_prev, c_out = c_out, c
        dec[f"up_blocks_{i}"] = up_block(sd, f"decoder.up_blocks.{i}", c_prev, c_out,
                                         [0] * (layers + 1), False, None,
                                         "conv" if i < n - 1 else None)
    dec["conv_norm_out"] = sd.norm("decoder.conv_norm_out", chans[0])
    dec["conv_out"] = sd.conv("decoder.conv_out", chans[0], cfg["out_channels"], 3)

    params = {"encoder": enc, "decoder": dec}
    if cfg["use_quant_conv"]:
        params["quant_conv"] = sd.conv("quant_conv", 2 * lat, 2 * lat, 1)
    if cfg["use_post_quant_conv"]:
        params["post_quant_conv"] = sd.conv("post_quant_conv", lat, lat, 1)
    sd.finish()
    return params
