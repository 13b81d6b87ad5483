"""Scan over layers: the two parameter layouts of a stack of identical blocks, and the lossless
conversion between them.

A model with ``scan_layers=True`` runs its L identical blocks as one ``nn.scan`` (one traced and
compiled block instead of L: compile time and program size no longer grow with the depth). Its
parameters are then stacked, every leaf of the L per-block subtrees gaining a leading axis of L:

    per-block (unrolled)                    stacked (scanned)
    block_0/attn/qkv/kernel (D, 3D)   <->   blocks/block/attn/qkv/kernel (L, D, 3D)
    ...
    block_{L-1}/attn/qkv/kernel

Each model that scans declares its ``scan_layout()``: {stacked path: (per-block prefix, indices)},
e.g. DiT's {'blocks/block': ('block_', range(L))}. ``stack`` and ``unstack`` convert a params tree
between the layouts (exactly: stacking is a concatenation), so a checkpoint written by either form,
converted pretrained weights (always per-block) and per-block tools (DeeDiff's heads, LoRA) work
with both; ``to_model`` converts whatever layout it is given into the one a module expects.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

Layout = Mapping[str, tuple]     # stacked path -> (per-block name prefix, block indices)


def _flat(params) -> dict:
    return traverse_util.flatten_dict(dict(params), sep="/")


def _nest(flat: dict) -> dict:
    return traverse_util.unflatten_dict(flat, sep="/")


def _stack_leaves(leaves: Sequence[Any]):
    if all(isinstance(a, np.ndarray) for a in leaves):
        return np.stack(leaves)
    return jnp.stack(leaves)


def stack(params: Mapping, layout: Layout) -> dict:
    """Per-block params -> stacked params (see module doc). Every listed block must be present
    with the same subtree; a missing block or a mismatched leaf is a ValueError naming it."""
    flat = _flat(params)
    for stacked, (prefix, indices) in layout.items():
        indices = list(indices)
        pat = re.compile(rf"^{re.escape(prefix)}(\d+)/(.+)$")
        groups: dict[str, dict[int, Any]] = {}
        for key in [k for k in flat if pat.match(k)]:
            m = pat.match(key)
            i = int(m.group(1))
            if i in indices:
                groups.setdefault(m.group(2), {})[i] = flat.pop(key)
        if not groups:
            raise ValueError(f"no per-block parameters {prefix}<i>/... to stack into {stacked} "
                             "(already stacked, or a different model?)")
        for rest, by_index in groups.items():
            missing = sorted(set(indices) - set(by_index))
            if missing:
                raise ValueError(f"cannot stack {prefix}<i>/{rest}: blocks {missing} lack it")
            leaves = [by_index[i] for i in indices]
            shapes = {tuple(a.shape) for a in leaves}
            if len(shapes) > 1:
                raise ValueError(f"cannot stack {prefix}<i>/{rest}: shapes differ {sorted(shapes)}")
            flat[f"{stacked}/{rest}"] = _stack_leaves(leaves)
    return _nest(flat)


def unstack(params: Mapping, layout: Layout) -> dict:
    """Stacked params -> per-block params: the inverse of ``stack``."""
    flat = _flat(params)
    for stacked, (prefix, indices) in layout.items():
        indices = list(indices)
        keys = [k for k in flat if k.startswith(stacked + "/")]
        if not keys:
            raise ValueError(f"no stacked parameters under {stacked} to unstack "
                             "(already per-block, or a different model?)")
        for key in keys:
            a = flat.pop(key)
            if a.shape[0] != len(indices):
                raise ValueError(f"{key} stacks {a.shape[0]} blocks, expected {len(indices)}")
            rest = key[len(stacked) + 1:]
            for j, i in enumerate(indices):
                flat[f"{prefix}{i}/{rest}"] = a[j]
    return _nest(flat)


def is_stacked(params: Mapping, layout: Layout) -> bool:
    """True if ``params`` is in the stacked layout of ``layout`` (False: per-block)."""
    flat = _flat(params)
    first = next(iter(layout))
    return any(k.startswith(first + "/") for k in flat)


def to_model(params: Mapping, module) -> dict:
    """``params`` in the layout ``module`` expects (stacked if its ``scan_layers`` is set, else
    per-block), converting if needed; a module without a scan layout gets them unchanged."""
    layout_of = getattr(module, "scan_layout", None)
    if layout_of is None:
        return params
    layout = layout_of()
    if not layout:
        return params
    want = bool(getattr(module, "scan_layers", False))
    have = is_stacked(params, layout)
    if want == have:
        return params
    return stack(params, layout) if want else unstack(params, layout)
