"""diffusers ``UNet2DModel`` checkpoints -> ``diffjax.models.unet2d.UNet2D`` params.

``model_config(hf_config)`` maps config.json to the registry config of UNet2D: name 'unet2d',
input_shape and UNet2D's fields (diffusers' defaults for a field the file omits; a field we do not
convert, or a value we do not implement, is a ConvertError naming it). ``convert(hf_config, sd)``
takes every tensor from the ``StateDict`` with its shape checked and returns the nested numpy
params tree of ``UNet2D.init`` exactly, then ``sd.finish()`` refuses leftovers.

Layouts: torch Linear (out, in) -> Dense (in, out); Conv2d (out, in, k, k) -> (k, k, in, out);
GroupNorm weight -> scale. The key of module ``a.b.0.c`` is the param path a/b_0/c (``to_out.0``
-> to_out). ``class_embedding.weight`` (N, E) gets a zero row appended: our table has N + 1 rows,
the last the null class (``labels=None``), which therefore adds no class embedding. Attention
weights under the deprecated names (query, key, value, proj_attn) are read as to_q, to_k, to_v,
to_out.

The block helpers (``resnet``, ``attention``, ``down_block``, ``up_block``, ``mid_block``) are
shared with ``convert/vae.py``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from diffjax.convert.state_dict import ConvertError, StateDict, check_fields
from diffjax.models.unet2d import DOWN_BLOCKS, UP_BLOCKS

CLASS_NAME = "UNet2DModel"
ACT_FNS = ("silu", "swish")
DEFAULTS = {  # diffusers UNet2DModel.__init__ defaults, for fields an older config.json omits
    "sample_size": None, "in_channels": 3, "out_channels": 3, "center_input_sample": False,
    "time_embedding_type": "positional", "time_embedding_dim": None, "freq_shift": 0,
    "flip_sin_to_cos": True,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (224, 448, 672, 896), "layers_per_block": 2, "mid_block_scale_factor": 1,
    "downsample_padding": 1, "downsample_type": "conv", "upsample_type": "conv", "dropout": 0.0,
    "act_fn": "silu", "attention_head_dim": 8, "norm_num_groups": 32, "attn_norm_num_groups": None,
    "norm_eps": 1e-5, "resnet_time_scale_shift": "default", "add_attention": True,
    "class_embed_type": None, "num_class_embeds": None, "num_train_timesteps": None,
}
KNOWN = {k: None for k in DEFAULTS}
KNOWN.update({
    "time_embedding_type": ("positional", "fourier"), "mid_block_type": ("UNetMidBlock2D", None),
    "downsample_type": ("conv", "resnet"), "upsample_type": ("conv", "resnet"), "act_fn": ACT_FNS,
    "resnet_time_scale_shift": ("default", "scale_shift"), "class_embed_type": (None,),
})
LEGACY_ATTENTION = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def check_class(hf_config: dict, class_name: str) -> None:
    name = hf_config.get("_class_name")
    if name is not None and name != class_name:
        raise ConvertError(f"config.json describes a {name}, not a {class_name}")


def _block_types(cfg: dict, field: str, table: dict) -> tuple:
    out = []
    for t in cfg[field]:
        t = t[7:] if t.startswith("UNetRes") else t   # diffusers' get_*_block strips this prefix
        if t not in table:
            raise ConvertError(f"{CLASS_NAME}: config.json field {field!r} holds {t!r}, which is "
                               f"not supported (diffjax converts {', '.join(table)})")
        out.append(t)
    return tuple(out)


def model_config(hf_config: dict) -> dict:
    """``{'name': 'unet2d', 'input_shape': (H, W, C) from sample_size (None without one), **UNet2D's
    fields}`` of a diffusers UNet2DModel config.json: ``registry.build_model`` builds it."""
    check_class(hf_config, CLASS_NAME)
    check_fields(hf_config, KNOWN, CLASS_NAME)
    cfg = {**DEFAULTS, **{k: v for k, v in hf_config.items() if not k.startswith("_")}}
    if cfg["norm_num_groups"] is None:
        raise ConvertError(f"{CLASS_NAME}: config.json field 'norm_num_groups' = None is not "
                           f"supported (diffusers' blocks need an int)")
    chans = tuple(int(c) for c in cfg["block_out_channels"])
    down = _block_types(cfg, "down_block_types", DOWN_BLOCKS)
    up = _block_types(cfg, "up_block_types", UP_BLOCKS)
    if not (len(down) == len(up) == len(chans)):
        raise ConvertError(f"{CLASS_NAME}: {len(down)} down_block_types, {len(up)} up_block_types "
                           f"and {len(chans)} block_out_channels: config.json needs one per level")
    opt_int = lambda v: None if v is None else int(v)
    size, c_in = cfg["sample_size"], int(cfg["in_channels"])
    if size is not None:
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        size = (int(h), int(w), c_in)
    return dict(
        name="unet2d", input_shape=size,
        in_channels=c_in, out_channels=int(cfg["out_channels"]),
        block_out_channels=chans, down_block_types=down, up_block_types=up,
        layers_per_block=int(cfg["layers_per_block"]),
        mid_block=cfg["mid_block_type"] is not None,
        mid_block_scale_factor=float(cfg["mid_block_scale_factor"]),
        add_attention=bool(cfg["add_attention"]),
        attention_head_dim=opt_int(cfg["attention_head_dim"]),
        attn_norm_num_groups=opt_int(cfg["attn_norm_num_groups"]),
        norm_num_groups=int(cfg["norm_num_groups"]), norm_eps=float(cfg["norm_eps"]),
        resnet_time_scale_shift=cfg["resnet_time_scale_shift"],
        downsample_padding=int(cfg["downsample_padding"]),
        downsample_type=cfg["downsample_type"], upsample_type=cfg["upsample_type"],
        time_embedding_type=cfg["time_embedding_type"],
        time_embedding_dim=opt_int(cfg["time_embedding_dim"]),
        flip_sin_to_cos=bool(cfg["flip_sin_to_cos"]), freq_shift=float(cfg["freq_shift"]),
        center_input_sample=bool(cfg["center_input_sample"]),
        num_classes=int(cfg["num_class_embeds"] or 0), dropout=float(cfg["dropout"]),
    )


# --- block helpers (shared with convert/vae.py) ---------------------------------------------------

def resnet(sd: StateDict, p: str, c_in: int, c_out: int, temb: Optional[int] = None,
           scale_shift: bool = False) -> dict:
    """ResnetBlock2D at prefix ``p``; ``temb`` the time-embedding width (None: no projection)."""
    out = {"norm1": sd.norm(f"{p}.norm1", c_in), "conv1": sd.conv(f"{p}.conv1", c_in, c_out, 3),
           "norm2": sd.norm(f"{p}.norm2", c_out), "conv2": sd.conv(f"{p}.conv2", c_out, c_out, 3)}
    if temb is not None:
        out["time_emb_proj"] = sd.linear(f"{p}.time_emb_proj", temb,
                                         2 * c_out if scale_shift else c_out)
    if c_in != c_out:
        out["conv_shortcut"] = sd.conv(f"{p}.conv_shortcut", c_in, c_out, 1)
    return out


def attention(sd: StateDict, p: str, c: int, head_dim: int, norm: bool = True) -> dict:
    """Attention2D at prefix ``p`` (C // head_dim heads of head_dim); legacy names accepted."""
    if c // head_dim < 1:
        raise ConvertError(f"{p}: attention_head_dim {head_dim} exceeds the block's {c} channels")
    inner = (c // head_dim) * head_dim
    name = lambda new: (new if sd.has(f"{p}.{new}.weight")
                        or not sd.has(f"{p}.{LEGACY_ATTENTION[new]}.weight")
                        else LEGACY_ATTENTION[new])
    out = {k: sd.linear(f"{p}.{name(k)}", c, inner) for k in ("to_q", "to_k", "to_v")}
    out["to_out"] = sd.linear(f"{p}.{name('to_out.0')}", inner, c)
    if norm:
        out["group_norm"] = sd.norm(f"{p}.group_norm", c)
    return out


def down_block(sd: StateDict, p: str, c_in: int, c_out: int, layers: int, attn: bool,
               head_dim: Optional[int], down: Optional[str], temb: Optional[int] = None,
               scale_shift: bool = False) -> dict:
    """DownBlock2D: resnets_i (+ attentions_i), downsamplers_0 ('conv', 'resnet' or None)."""
    out = {}
    for i in range(layers):
        out[f"resnets_{i}"] = resnet(sd, f"{p}.resnets.{i}", c_in if i == 0 else c_out, c_out,
                                     temb, scale_shift)
        if attn:
            out[f"attentions_{i}"] = attention(sd, f"{p}.attentions.{i}", c_out, head_dim or c_out)
    if down == "conv":
        out["downsamplers_0"] = {"conv": sd.conv(f"{p}.downsamplers.0.conv", c_out, c_out, 3)}
    elif down == "resnet":
        out["downsamplers_0"] = resnet(sd, f"{p}.downsamplers.0", c_out, c_out, temb, scale_shift)
    return out


def up_block(sd: StateDict, p: str, c_prev: int, c_out: int, skips: Sequence[int], attn: bool,
             head_dim: Optional[int], up: Optional[str], temb: Optional[int] = None,
             scale_shift: bool = False) -> dict:
    """UpBlock2D; ``skips``: the channels concatenated before each resnet (0 for none)."""
    out = {}
    for i, s in enumerate(skips):
        out[f"resnets_{i}"] = resnet(sd, f"{p}.resnets.{i}", (c_prev if i == 0 else c_out) + s,
                                     c_out, temb, scale_shift)
        if attn:
            out[f"attentions_{i}"] = attention(sd, f"{p}.attentions.{i}", c_out, head_dim or c_out)
    if up == "conv":
        out["upsamplers_0"] = {"conv": sd.conv(f"{p}.upsamplers.0.conv", c_out, c_out, 3)}
    elif up == "resnet":
        out["upsamplers_0"] = resnet(sd, f"{p}.upsamplers.0", c_out, c_out, temb, scale_shift)
    return out


def mid_block(sd: StateDict, p: str, c: int, head_dim: int, add_attention: bool, attn_norm: bool,
              temb: Optional[int] = None, scale_shift: bool = False) -> dict:
    """UNetMidBlock2D: resnets_0, attentions_0 (if add_attention), resnets_1."""
    out = {"resnets_0": resnet(sd, f"{p}.resnets.0", c, c, temb, scale_shift)}
    if add_attention:
        out["attentions_0"] = attention(sd, f"{p}.attentions.0", c, head_dim, attn_norm)
    out["resnets_1"] = resnet(sd, f"{p}.resnets.1", c, c, temb, scale_shift)
    return out


# --- the model ------------------------------------------------------------------------------------

def convert(hf_config: dict, sd: StateDict) -> dict:
    """The UNet2D params tree (numpy) of a diffusers UNet2DModel state dict (module docstring)."""
    cfg = model_config(hf_config)
    chans, n = cfg["block_out_channels"], len(cfg["block_out_channels"])
    c0, hd = chans[0], cfg["attention_head_dim"]
    temb = cfg["time_embedding_dim"] or 4 * c0
    ss = cfg["resnet_time_scale_shift"] == "scale_shift"
    params = {"conv_in": sd.conv("conv_in", cfg["in_channels"], c0, 3)}
    if cfg["time_embedding_type"] == "fourier":
        params["time_proj"] = {"weight": sd.take("time_proj.weight", (c0,))}
    t_in = 2 * c0 if cfg["time_embedding_type"] == "fourier" else c0
    params["time_embedding"] = {"linear_1": sd.linear("time_embedding.linear_1", t_in, temb),
                                "linear_2": sd.linear("time_embedding.linear_2", temb, temb)}
    if cfg["num_classes"]:
        table = sd.take("class_embedding.weight", (cfg["num_classes"], temb))
        params["class_embedding"] = {
            "embedding": np.concatenate([table, np.zeros((1, temb), table.dtype)])}

    layers = cfg["layers_per_block"]
    c_out = c0
    for i, kind in enumerate(cfg["down_block_types"]):
        c_in, c_out = c_out, chans[i]
        attn, down = DOWN_BLOCKS[kind]
        down = (down or cfg["downsample_type"]) if i < n - 1 else None
        params[f"down_blocks_{i}"] = down_block(sd, f"down_blocks.{i}", c_in, c_out, layers, attn,
                                                hd, down, temb, ss)
    if cfg["mid_block"]:
        attn_norm = cfg["attn_norm_num_groups"] is not None or not ss
        params["mid_block"] = mid_block(sd, "mid_block", chans[-1], hd or chans[-1],
                                        cfg["add_attention"], attn_norm, temb, ss)
    rev = chans[::-1]
    c_out = rev[0]
    for i, kind in enumerate(cfg["up_block_types"]):
        c_prev, c_out, c_in = c_out, rev[i], rev[min(i + 1, n - 1)]
        skips = [c_in if j == layers else c_out for j in range(layers + 1)]
        attn, up = UP_BLOCKS[kind]
        up = (up or cfg["upsample_type"]) if i < n - 1 else None
        params[f"up_blocks_{i}"] = up_block(sd, f"up_blocks.{i}", c_prev, c_out, skips, attn, hd,
                                            up, temb, ss)
    params["conv_norm_out"] = sd.norm("conv_norm_out", c0)
    params["conv_out"] = sd.conv("conv_out", c0, cfg["out_channels"], 3)
    sd.finish()
    return params
