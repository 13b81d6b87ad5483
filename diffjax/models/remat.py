"""Rematerialization (gradient checkpointing, Chen et al. 2016, "Training Deep Nets with Sublinear
Memory Cost") of a model's repeated blocks, chosen by ``config.model.remat``.

A rematerialized block keeps only what its policy saves from the forward pass and recomputes the
rest in the backward pass: activation memory falls from every intermediate of every block to the
block inputs (plus what the policy saves), for at most one extra forward pass of FLOPs.

    'none'                              keep every intermediate (no remat; the default)
    'full'                              save nothing inside a block: only its inputs survive
                                        (``jax.checkpoint_policies.nothing_saveable``)
    'dots_saveable'                     save every matmul / conv output, recompute the rest
                                        (norms, activations, softmax)
    'dots_with_no_batch_dims_saveable'  save the weight matmuls (no batch dimension in the
                                        contraction), recompute attention's batched q k^T and
                                        p v and the elementwise work: the usual transformer choice
    'offload_dot_with_no_batch_dims'    as above, but the saved matmul outputs live in pinned host
                                        memory until the backward pass (backends with a host
                                        memory space: TPU, GPU)

Applied per block by ``wrap`` (every family: DiT / PixArt / DiMR / DiCo blocks, U-Net ResBlocks and
attention blocks); the parameters and the forward values are unchanged, only the backward pass's
memory and FLOPs differ (tests/models/test_remat.py compares gradients).
"""
from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax

POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable",
            "offload_dot_with_no_batch_dims")


def policy(name: str) -> Optional[Callable]:
    """The ``jax.checkpoint`` policy of a ``config.model.remat`` choice (None: save nothing)."""
    check(name)
    cp = jax.checkpoint_policies
    if name in ("none", "full"):
        return None if name == "full" else cp.everything_saveable
    if name == "offload_dot_with_no_batch_dims":
        return cp.offload_dot_with_no_batch_dims("device", "pinned_host")
    return getattr(cp, name)


def check(name: str) -> str:
    if name not in POLICIES:
        raise ValueError(f"unknown model remat {name!r}; expected one of {', '.join(POLICIES)} "
                         "(config.model.remat)")
    return name


def wrap(block: type, name: str, static_argnums: Sequence[int] = (), *,
         scanned: bool = False) -> type:
    """``block`` (a linen Module class) rematerialized by policy ``name``; the class itself for
    'none'. ``static_argnums`` index ``__call__``'s arguments counting ``self`` as 0 (Python values
    such as ``train`` must be static). Inside ``nn.scan`` the scan already keeps XLA from merging
    the recomputation with the forward pass, so ``scanned=True`` drops the CSE barrier."""
    if check(name) == "none":
        return block
    return _wrapped(block, name, tuple(static_argnums), scanned)


@functools.lru_cache(maxsize=None)
def _wrapped(block, name, static_argnums, scanned):
    cls = nn.remat(block, policy=policy(name), prevent_cse=not scanned,
                   static_argnums=static_argnums)
    # keep the block's class name: auto-named submodules ('ResBlock_3') keep their param paths,
    # so a checkpoint trained without remat loads with it and vice versa
    cls.__name__, cls.__qualname__ = block.__name__, block.__qualname__
    return cls
