"""Samplers for absorbing diffusion with a time-free network (Ou et al., ICLR 2025, RADD Sec. 3.2
and Alg. 1-2), with caching, and the any-order autoregressive sampler.

``log_p_fn(x) -> (B, L, V)`` is log p_theta(y | x^UM) over the real tokens. Grid
t_0 = 1 > t_1 > ... > t_K = t_end; x starts all-mask. Step k (t = t_k, s = t_{k+1}):

    every masked x^i independently leaves the mask with probability r, and then takes
    y ~ p_theta(. | x^UM);  r = 1 at the last step (nothing stays masked)
    tau_leaping ("Tweedie"): r = (m(t) - m(s)) / m(t) = (e^{-sb(s)} - e^{-sb(t)}) / (1 - e^{-sb(t)})
    euler:                   r = (t - s) sigma(t) a(t)   (= (t - s) / t for the log-linear schedule)

Caching: the network output depends on x only (no t), so when a step changed no token the next
step reuses it. ``lax.cond`` skips the call, so the compiled loop really does fewer evaluations;
NFE = 1 + the number of non-final steps that changed x, at most min(K, L + 1) per sequence.
The random draws are the same with and without the cache (``cache=False`` takes the same branch
every step), so both give identical samples for the same key.

Randomness is per example (``fold_in(key, b)``, then the step), so a sequence does not depend on
the batch it is drawn in. Every call runs the whole batch; ``nfe`` counts those calls, and
``nfe_per_seq`` the calls a batch of that one sequence would make.

AO-ARM: a uniformly random order per sequence; each call reveals exactly one position, drawn from
p_theta(. | revealed ones): L calls (RADD Sec. 4: absorbing diffusion = any-order AR model).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from diffjax.discrete import absorbing

SAMPLERS = ("tau_leaping", "euler", "aoarm")


class Result(NamedTuple):
    tokens: jax.Array        # (B, L) int32, no mask left
    nfe: jax.Array           # () int32: network calls on the batch
    nfe_per_seq: jax.Array   # (B,) int32: calls a batch of one would make


def time_grid(steps: int, t_end: float = 1e-5):
    """t_k = 1 - k (1 - t_end) / K, k = 0..K (RADD's linspace(1, t_end, K + 1))."""
    return jnp.linspace(1.0, t_end, steps + 1)


def _draws(key, step, length: int, vocab: int):
    """(uniform (L,), Gumbel (L, V)) of one sequence at one step."""
    k_u, k_g = jax.random.split(jax.random.fold_in(key, step))
    return jax.random.uniform(k_u, (length,)), jax.random.gumbel(k_g, (length, vocab))


def sample(log_p_fn, key, batch: int, length: int, *, vocab: int, steps: int,
           method: str = "tau_leaping", cache: bool = True,
           schedule=absorbing.LogLinear(), t_end: float = 1e-5) -> Result:
    """Draw ``batch`` sequences of ``length`` tokens in ``steps`` steps (``method``: tau_leaping
    or euler); mask id = ``vocab``. Jit-able with ``steps``, ``method`` and ``cache`` static."""
    if method == "aoarm":
        return sample_aoarm(log_p_fn, key, batch, length, vocab=vocab)
    rate_fn = {"tau_leaping": absorbing.unmask_prob, "euler": absorbing.euler_unmask_prob}.get(method)
    if rate_fn is None:
        raise ValueError(f"unknown sampler {method!r}; expected one of {', '.join(SAMPLERS)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    mask_id = vocab
    times = time_grid(steps, t_end)
    keys = jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(batch))

    def body(carry, k):
        x, log_p, dirty, nfe, nfe_seq = carry
        call = jnp.any(dirty) if cache else jnp.bool_(True)
        log_p = jax.lax.cond(call, lambda: log_p_fn(x).astype(jnp.float32), lambda: log_p)
        nfe = nfe + call.astype(jnp.int32)
        nfe_seq = nfe_seq + (dirty if cache else jnp.ones_like(dirty)).astype(jnp.int32)
        t, s = times[k], times[k + 1]
        r = jnp.where(k == steps - 1, 1.0, rate_fn(schedule, t, s))
        u, g = jax.vmap(lambda kb: _draws(kb, k, length, vocab))(keys)
        y = jnp.argmax(log_p + g, axis=-1).astype(x.dtype)
        new = jnp.where((x == mask_id) & (u < r), y, x)
        return (new, log_p, jnp.any(new != x, axis=1), nfe, nfe_seq), None

    init = (jnp.full((batch, length), mask_id, jnp.int32),
            jnp.zeros((batch, length, vocab), jnp.float32), jnp.ones((batch,), bool),
            jnp.int32(0), jnp.zeros((batch,), jnp.int32))
    (x, _, _, nfe, nfe_seq), _ = jax.lax.scan(body, init, jnp.arange(steps))
    return Result(tokens=x, nfe=nfe, nfe_per_seq=nfe_seq)


def sample_aoarm(log_p_fn, key, batch: int, length: int, *, vocab: int) -> Result:
    """Any-order autoregressive sampling: L calls, each revealing one position of a random order."""
    mask_id = vocab
    keys = jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(batch))
    order = jax.vmap(lambda kb: jax.random.permutation(jax.random.fold_in(kb, length), length))(keys)
    rows = jnp.arange(batch)

    def body(x, j):
        log_p = log_p_fn(x).astype(jnp.float32)
        pos = order[:, j]
        g = jax.vmap(lambda kb: jax.random.gumbel(jax.random.fold_in(kb, j), (vocab,)))(keys)
        y = jnp.argmax(log_p[rows, pos] + g, axis=-1).astype(x.dtype)
        return x.at[rows, pos].set(y), None

    x, _ = jax.lax.scan(body, jnp.full((batch, length), mask_id, jnp.int32), jnp.arange(length))
    return Result(tokens=x, nfe=jnp.int32(length), nfe_per_seq=jnp.full((batch,), length, jnp.int32))
