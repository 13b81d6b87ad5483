"""diffusers ``DiTTransformer2DModel`` (DiT-XL/2-256 and -512, Peebles & Xie 2023) -> diffjax ``dit``.

The two implementations compute the same network; the converter maps names and layouts:

    diffusers                                          diffjax (models/dit.py)
    pos_embed.proj (Conv2d D x C x p x p, stride p)    x_embedder: Dense over "(p q c)" patches
    pos_embed.pos_embed (buffer, 1 x N x D)            sincos_2d (checked equal, not stored)
    transformer_blocks.0.norm1.emb.timestep_embedder   t_embedder fc1 / fc2
    transformer_blocks.0.norm1.emb.class_embedder      y_embedder/table (num_classes + 1 rows,
                                                         the last the CFG null class: the same)
    transformer_blocks.i.norm1.linear (6D)             block_i/adaLN/linear: (shift, scale, gate) x 2
    transformer_blocks.i.attn1.to_q / to_k / to_v      block_i/attn/qkv: [q | k | v], heads "(h d)"
    transformer_blocks.i.attn1.to_out.0                block_i/attn/proj
    transformer_blocks.i.ff.net.0.proj / ff.net.2      block_i/mlp/fc1 / fc2 (GELU tanh)
    proj_out_1 (2D) / proj_out_2                       final_layer/adaLN/linear / final_layer/linear

Every block of a diffusers DiT holds its own copy of the timestep and class embedders (its
``norm1.emb``), and its final layer reads block 0's. diffjax has one condition embedding; the
converter takes block 0's and refuses a checkpoint whose copies differ (they are equal in the
released DiT weights, which the conversion from the original code copies). diffusers embeds the
timestep with ``downscale_freq_shift=1`` (frequencies 10000^(-j/(half-1)); the original DiT:
/half) and uses eps=1e-5 in the LayerNorm before the MLP: ``freq_shift=1``, ``mlp_norm_eps=1e-5``.
``out_channels = 2 in_channels`` is DiT's learned sigma (``learn_sigma``: the first half is eps).
The network's time input is diffusers' timestep t in [0, 999]: the 'vp_discrete' process's noise
label.
"""
from __future__ import annotations

import numpy as np

from diffjax.convert.state_dict import (ConvertError, StateDict, config_with_defaults,
                                        learned_sigma)

CLASS_NAME = "DiTTransformer2DModel"
_FIELDS = {
    "num_attention_heads": None, "attention_head_dim": None, "in_channels": None,
    "out_channels": None, "num_layers": None, "dropout": None, "norm_num_groups": None,
    "attention_bias": True, "sample_size": None, "patch_size": None,
    "activation_fn": "gelu-approximate", "num_embeds_ada_norm": None, "upcast_attention": None,
    "norm_type": "ada_norm_zero", "norm_elementwise_affine": False, "norm_eps": None,
}
_DEFAULTS = {"num_attention_heads": 16, "attention_head_dim": 72, "in_channels": 4,
             "out_channels": None, "num_layers": 28, "dropout": 0.0, "sample_size": 32,
             "patch_size": 2, "num_embeds_ada_norm": 1000, "norm_eps": 1e-5}


def _cfg(hf: dict) -> dict:
    return config_with_defaults(hf, _FIELDS, _DEFAULTS, CLASS_NAME)


def model_config(hf: dict) -> dict:
    """The diffjax ``dit`` model fields of a diffusers DiT config.json."""
    c = _cfg(hf)
    cin = int(c["in_channels"])
    learn_sigma = learned_sigma(CLASS_NAME, cin, c["out_channels"])
    size, p = int(c["sample_size"]), int(c["patch_size"])
    if size % p:
        raise ConvertError(f"{CLASS_NAME}: sample_size {size} is not divisible by patch_size {p}")
    return dict(name="dit", input_shape=(size, size, cin), patch_size=p,
                hidden_size=int(c["num_attention_heads"]) * int(c["attention_head_dim"]),
                depth=int(c["num_layers"]), num_heads=int(c["num_attention_heads"]), mlp_ratio=4.0,
                num_classes=int(c["num_embeds_ada_norm"]), learn_sigma=learn_sigma,
                dropout=float(c["dropout"]), freq_dim=256, freq_shift=1.0,
                mlp_norm_eps=float(c["norm_eps"]))


def _embedders(sd: StateDict, depth: int, d: int, n_rows: int) -> dict:
    """Block 0's condition embedders; every other block's copy must equal them."""
    pre = "transformer_blocks.{}.norm1.emb."
    names = ["timestep_embedder.linear_1.weight", "timestep_embedder.linear_1.bias",
             "timestep_embedder.linear_2.weight", "timestep_embedder.linear_2.bias",
             "class_embedder.embedding_table.weight"]
    first = {n: sd.tensors.get(pre.format(0) + n) for n in names}
    for i in range(1, depth):
        for n in names:
            key = pre.format(i) + n
            if key in sd.tensors and first[n] is not None and not np.array_equal(
                    np.asarray(sd.tensors[key]), np.asarray(first[n])):
                raise ConvertError(f"{CLASS_NAME}: {key} differs from block 0's copy; diffjax's "
                                   f"DiT has one condition embedding (released DiT weights hold "
                                   f"equal copies)")
        sd.skip(pre.format(i))
    p0 = pre.format(0)
    return {
        "t_embedder": {"fc1": sd.linear(p0 + "timestep_embedder.linear_1", 256, d),
                       "fc2": sd.linear(p0 + "timestep_embedder.linear_2", d, d)},
        "y_embedder": {"table": {"embedding": sd.take(p0 + "class_embedder.embedding_table.weight",
                                                      (n_rows, d))}},
    }


def convert(hf: dict, sd: StateDict) -> dict:
    """Params of the per-block (``block_i``) layout; ``models.scan.to_model`` stacks them for a
    scanned model."""
    from diffjax.models.embeddings import sincos_2d

    mc = model_config(hf)
    d, depth, p = mc["hidden_size"], mc["depth"], mc["patch_size"]
    size, _, cin = mc["input_shape"]
    out_ch = cin * (2 if mc["learn_sigma"] else 1)
    params = _embedders(sd, depth, d, mc["num_classes"] + 1)
    w = sd.take("pos_embed.proj.weight", (d, cin, p, p))
    params["x_embedder"] = {"kernel": w.transpose(2, 3, 1, 0).reshape(p * p * cin, d),
                            "bias": sd.take("pos_embed.proj.bias", (d,))}
    if sd.has("pos_embed.pos_embed"):
        g = size // p
        table = sd.take("pos_embed.pos_embed", (1, g * g, d))[0]
        ours = np.asarray(sincos_2d(g, g, d))
        if not np.allclose(table, ours, atol=1e-5):
            raise ConvertError(f"{CLASS_NAME}: pos_embed.pos_embed is not the DiT sin-cos table "
                               f"of a {g}x{g} grid (max difference {np.abs(table - ours).max():.3g}; "
                               f"an interpolation_scale other than 1?)")
    for i in range(depth):
        b = f"transformer_blocks.{i}."
        q, k, v = (sd.linear(b + f"attn1.to_{n}", d, d) for n in "qkv")
        params[f"block_{i}"] = {
            "adaLN": {"linear": sd.linear(b + "norm1.linear", d, 6 * d)},
            "attn": {"qkv": {"kernel": np.concatenate([q["kernel"], k["kernel"], v["kernel"]], 1),
                             "bias": np.concatenate([q["bias"], k["bias"], v["bias"]])},
                     "proj": sd.linear(b + "attn1.to_out.0", d, d)},
            "mlp": {"fc1": sd.linear(b + "ff.net.0.proj", d, 4 * d),
                    "fc2": sd.linear(b + "ff.net.2", 4 * d, d)},
        }
    params["final_layer"] = {"adaLN": {"linear": sd.linear("proj_out_1", d, 2 * d)},
                             "linear": sd.linear("proj_out_2", d, p * p * out_ch)}
    sd.finish()
    return params
