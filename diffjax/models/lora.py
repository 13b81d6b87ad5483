"""LoRA (Hu et al. 2022, "LoRA: Low-rank adaptation of large language models") as a transform of any
Flax model's params: no change to the model, and any ``model.apply`` takes the merged params.

For each selected kernel W (a Dense kernel (in, out), or a conv kernel (*window, in, out) seen as
(prod(window) in, out)):
    W' = W + (alpha / r) A B,   A: (in', r) ~ N(0, 1/in'),  B: (r, out) = 0
so ``merge(params, init(...))`` is exactly ``params`` at initialisation and the update has rank
<= r. Train only the adapters: ``merge(stop_gradient(base), adapters)`` inside the loss, or the
objective contract's ``trainable`` mask over {'base': ..., 'lora': ...} (``trainable_mask``).
Used by PPAP's parameter-efficient experts (issue 15) and the fine-tuning recipes.

    adapters = lora.init(key, params, rank=4, targets=r".*(qkv|proj|conv).*kernel")
    out = model.apply({'params': lora.merge(params, adapters, alpha=4.0)}, x, t)
"""
from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp



def path_name(path) -> str:
    """'down_0/conv/kernel' from a jax tree key path (the names ``targets`` match)."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _kernels(params, targets: str):
    pattern = re.compile(targets)
    found = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = path_name(path)
        if name.endswith("kernel") and getattr(leaf, "ndim", 0) >= 2 and pattern.fullmatch(name):
            found[name] = leaf
    return found


def init(key, params, rank: int, targets: str = r".*kernel") -> dict:
    """Adapters {kernel path: {'a': (in', r), 'b': (r, out)}} for every kernel whose path
    (``path_name``, e.g. 'down_0/conv/kernel') fully matches ``targets``."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"lora rank must be a positive integer, got {rank!r}")
    kernels = _kernels(params, targets)
    if not kernels:
        raise ValueError(f"lora targets {targets!r} match no kernel of the params (paths look "
                         f"like {', '.join(list(_names(params))[:3])})")
    out = {}
    for i, (name, w) in enumerate(sorted(kernels.items())):
        fan_in = math.prod(w.shape[:-1])
        r = min(rank, fan_in, w.shape[-1])
        a = jax.random.normal(jax.random.fold_in(key, i), (fan_in, r), jnp.float32) / math.sqrt(fan_in)
        out[name] = {"a": a, "b": jnp.zeros((r, w.shape[-1]), jnp.float32)}
    return out


def _names(params):
    return (path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0])


def merge(params, adapters: dict, alpha: float | None = None):
    """``params`` with W + (alpha / r) A B for every adapted kernel (alpha None: alpha = r)."""
    missing = set(adapters) - set(_names(params))
    if missing:
        raise ValueError(f"lora adapters for {sorted(missing)[:3]} have no kernel in these params "
                         f"(were they made for another model?)")

    def one(path, w):
        ad = adapters.get(path_name(path))
        if ad is None:
            return w
        r = ad["a"].shape[1]
        scale = 1.0 if alpha is None else alpha / r
        delta = (ad["a"] @ ad["b"]).reshape(w.shape)
        return (w + scale * delta).astype(w.dtype)

    return jax.tree_util.tree_map_with_path(one, params)


def trainable_mask(tree: dict):
    """For params stored as {'base': ..., 'lora': ...}: True on the adapters, False on the base
    (the objective contract's ``trainable``)."""
    return {"base": jax.tree.map(lambda _: False, tree["base"]),
            "lora": jax.tree.map(lambda _: True, tree["lora"])}
