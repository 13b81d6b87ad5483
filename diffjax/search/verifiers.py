"""Verifiers for inference-time search: plain batched, jit-able functions

    verifier(x0, cond) -> scores (B,)        higher is better; cond as the sampler's (labels...)

built from a classifier's logits (the log-probability of a class, of a set of classes such as the
DTS paper's even / odd digits, or of the label in ``cond``), from features (``feature_distance``:
how close a sample's features lie to a reference set's, Frechet-style), from any user function, or
as an ensemble ranked as in Ma et al. 2025 ("Inference-time scaling for diffusion models beyond
scaling denoising steps": candidates ranked by the unweighted mean of their per-verifier ranks).

    v = verifiers.from_spec("class:7", logits_fn)      # or "even", "odd", "label", "classes:1,3"
    v = verifiers.feature_distance(features_fn, real_features_of_class_7)
    v = verifiers.rank_ensemble([v1, v2])
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Verifier = Callable  # (x0, cond) -> (B,)


def class_logprob(logits_fn: Callable, classes: Sequence[int] | None = None,
                  label_key: str = "label") -> Verifier:
    """log p(y in classes | x0) = logsumexp of the log-softmax over ``classes`` (one class: its
    log-probability); ``classes=None``: the label of each example, ``cond[label_key]``.
    ``logits_fn(x0) -> (B, C)``."""
    wanted = None if classes is None else sorted(set(int(c) for c in classes))
    if wanted is not None and not wanted:
        raise ValueError("class_logprob: classes is empty")
    idx = None if wanted is None else np.asarray(wanted, np.int32)   # static: fine under jit

    def verifier(x0, cond=None):
        logits = logits_fn(x0)
        if logits.ndim != 2 or logits.shape[0] != x0.shape[0]:
            raise ValueError(f"verifier: the classifier returned logits of shape {logits.shape} "
                             f"for a batch of {x0.shape[0]}; expected ({x0.shape[0]}, classes)")
        lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        if idx is None:
            if cond is None or label_key not in cond:
                raise ValueError(f"verifier 'label' scores the label of each example: it needs "
                                 f"cond[{label_key!r}]")
            return jnp.take_along_axis(lp, cond[label_key][:, None].astype(jnp.int32), 1)[:, 0]
        if wanted[-1] >= lp.shape[-1]:
            raise ValueError(f"verifier: class {wanted[-1]} is not one of the classifier's "
                             f"{lp.shape[-1]} classes")
        return jax.nn.logsumexp(lp[:, idx], axis=-1)

    return verifier


def from_spec(spec: str, logits_fn: Callable, num_classes: int | None = None) -> Verifier:
    """A classifier verifier by name: 'class:K', 'classes:K1,K2,...', 'even', 'odd', 'label'."""
    spec = spec.strip()
    if spec == "label":
        return class_logprob(logits_fn, None)
    if spec in ("even", "odd"):
        if not num_classes:
            raise ValueError(f"verifier {spec!r} needs the number of classes")
        return class_logprob(logits_fn, range(0 if spec == "even" else 1, num_classes, 2))
    name, _, arg = spec.partition(":")
    if name in ("class", "classes") and arg:
        try:
            classes = [int(a) for a in arg.split(",")]
        except ValueError:
            raise ValueError(f"verifier {spec!r}: classes must be integers") from None
        if num_classes and any(not 0 <= c < num_classes for c in classes):
            raise ValueError(f"verifier {spec!r}: classes must lie in 0 .. {num_classes - 1}")
        return class_logprob(logits_fn, classes)
    raise ValueError(f"unknown verifier {spec!r}; expected class:K, classes:K1,K2, even, odd or "
                     f"label")


def feature_distance(features_fn: Callable, reference, metric: str = "gaussian",
                     eps: float = 1e-3) -> Verifier:
    """A Frechet-style verifier: how close each sample's features f = features_fn(x0) (B, F) lie
    to the statistics (mu, S) of ``reference`` features (N, F) of the data to match (e.g. the
    real images of a class under a classifier's penultimate layer). ``metric``:

        'gaussian'  -(1/2) (f - mu)^T (S + eps I)^-1 (f - mu)  (the log-density of N(mu, S) up to
                    a constant: the per-sample term of the Frechet distance's Gaussian model)
        'l2'        -|f - mu|^2                               (the Frechet distance's mean term)

    Higher is closer; the statistics are computed once, here."""
    import numpy as onp

    ref = onp.asarray(reference, onp.float64)
    if ref.ndim != 2 or ref.shape[0] < 2:
        raise ValueError(f"feature_distance: reference features must be (N >= 2, F), got "
                         f"{ref.shape}")
    if metric not in ("gaussian", "l2"):
        raise ValueError(f"feature_distance: metric must be 'gaussian' or 'l2', got {metric!r}")
    mu = jnp.asarray(ref.mean(0), jnp.float32)
    cov = onp.cov(ref, rowvar=False).reshape(ref.shape[1], ref.shape[1])
    prec = jnp.asarray(onp.linalg.inv(cov + eps * onp.eye(ref.shape[1])), jnp.float32)

    def verifier(x0, cond=None):
        f = features_fn(x0).astype(jnp.float32)
        if f.ndim != 2 or f.shape != (x0.shape[0], mu.shape[0]):
            raise ValueError(f"feature_distance: features_fn returned {f.shape} for a batch of "
                             f"{x0.shape[0]}; the reference has {mu.shape[0]} features")
        d = f - mu
        if metric == "l2":
            return -jnp.sum(d * d, axis=-1)
        return -0.5 * jnp.einsum("bi,ij,bj->b", d, prec, d)

    return verifier


def from_fn(fn: Callable) -> Verifier:
    """Any function x0 -> (B,) (or (x0, cond) -> (B,)) as a verifier, shape-checked."""
    import inspect
    takes_cond = len(inspect.signature(fn).parameters) >= 2

    def verifier(x0, cond=None):
        s = fn(x0, cond) if takes_cond else fn(x0)
        if s.shape != (x0.shape[0],):
            raise ValueError(f"verifier returned scores of shape {s.shape} for a batch of "
                             f"{x0.shape[0]}; expected ({x0.shape[0]},)")
        return s.astype(jnp.float32)

    return verifier


def ranks(scores) -> jax.Array:
    """Rank of each score within its row's candidates, 0 = the lowest (ties: by position)."""
    return jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1).astype(jnp.float32)


def rank_ensemble(verifiers: Sequence[Verifier]) -> Callable:
    """Ma et al.'s ensemble: over a set of candidates (B, N, ...) the mean of each verifier's rank.
    Returns ``score(x0_candidates (B*N, ...), cond, n) -> (B*N,)``: it ranks within each example's
    N candidates (a rank is only defined within a set), so it takes N."""
    verifiers = list(verifiers)
    if not verifiers:
        raise ValueError("rank_ensemble: no verifiers")

    def score(x0, cond, n: int):
        per = [v(x0, cond).reshape(-1, n) for v in verifiers]
        return jnp.mean(jnp.stack([ranks(p) for p in per]), axis=0).reshape(-1)

    score.per_set = True
    return score


def set_scorer(verifier) -> Callable:
    """``score(x0, cond, n) -> (B*N,)`` for B examples' N candidates each, from a verifier (which
    scores each candidate alone) or a rank ensemble (which scores within each example's set)."""
    if getattr(verifier, "per_set", False):
        return verifier
    return lambda x0, cond, n: verifier(x0, cond)
