"""RADD's four training losses for absorbing diffusion (Ou et al., ICLR 2025, Sec. 3-4), each a
per-sequence upper bound on -log p_theta(x0) in nats.

``log_p_fn(x_t) -> (B, L, V)`` is the time-free network: log p_theta(y | x_t^UM) over the V real
tokens at every position (only masked positions are read). Sums run over the masked positions i
of x_t; x0^i is the clean token there.

    lambda-DCE  lambda ~ U(0, 1) (stratified: lambda_b = (u_b + b) / B); mask w.p. lambda;
                L = -(1 / lambda) sum_i log p_theta(x0^i | x_t^UM)
    t-DCE       t = (1 - t_min) u + t_min (u stratified: (u0 + b / B) mod 1), mask w.p. m(t);
                L = sigma(t) a(t) sum_i -log p_theta(x0^i | x_t^UM)
    DSE         SEDD's denoising score entropy with the score s = a(t) p_theta (absorbing.py):
                L = sigma(t) sum_i [ sum_y s_y - a log s_{x0^i} + a (log a - 1) ]
    k-DCE       (any-order autoregressive, AO-ARM) k ~ U{1..L}; mask exactly k positions;
                L = -(L / k) sum_i log p_theta(x0^i | x_t^UM)

Why they agree: with lambda = m(t), d lambda = sigma(t) e^{-sigma_bar} dt, so
sigma(t) a(t) dt = d lambda / lambda and t-DCE is lambda-DCE after a change of variables (over
lambda in [(1 - eps) t_min, 1 - eps], so its expectation is (1 - eps) times the full one for a
product distribution; uniform t on [t_min, 1] also divides by 1 - t_min). With normalised
p_theta the DSE terms sum to a (-log p_theta), so DSE = t-DCE sample by sample. lambda-DCE and
k-DCE are equal in expectation (the number of masked tokens given lambda is Binomial(L, lambda)),
and both equal the expected NLL of an any-order autoregressive model over uniform orders.
Note: the official code's t-DCE takes -log of the *score* a p_theta; the extra
-a log a per masked token integrates to zero over t in [0, 1] (int_0^1 log(u / (1 - u)) du = 0),
so it changes only the variance; the form here is the change of variables of lambda-DCE.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.discrete import absorbing

LOSSES = ("lambda_dce", "t_dce", "dse", "k_dce")


def masked_log_lik(log_p, x0, masked):
    """sum over masked positions of log p(x0^i | .): (B, L, V), (B, L), (B, L) bool -> (B,)."""
    picked = jnp.take_along_axis(log_p, x0[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(masked, picked, 0.0), axis=-1)


def stratified_uniform(key, batch: int):
    """(u_b + b) / B: one uniform per row, stratified over the batch."""
    return (jax.random.uniform(key, (batch,)) + jnp.arange(batch)) / batch


def stratified_t(key, batch: int, t_min: float):
    """t = (1 - t_min) u + t_min with u = (u0 + b / B) mod 1 (variational-diffusion stratification)."""
    u = jnp.mod(jax.random.uniform(key, ()) + jnp.arange(batch) / batch, 1.0)
    return (1.0 - t_min) * u + t_min


def lambda_dce(log_p_fn, x0, key, *, mask_id: int, **_):
    k_lam, k_mask = jax.random.split(key)
    lam = jnp.maximum(stratified_uniform(k_lam, x0.shape[0]), 1e-6)
    xt = absorbing.mask(k_mask, x0, lam, mask_id)
    return -masked_log_lik(log_p_fn(xt), x0, xt == mask_id) / lam


def _at_t(x0, key, mask_id, schedule, t_min):
    k_t, k_mask = jax.random.split(key)
    t = stratified_t(k_t, x0.shape[0], t_min)
    sb = schedule.sigma_bar(t)
    xt = absorbing.mask(k_mask, x0, -jnp.expm1(-sb), mask_id)
    return t, sb, xt


def t_dce(log_p_fn, x0, key, *, mask_id: int, schedule=absorbing.LogLinear(), t_min=1e-3, **_):
    t, sb, xt = _at_t(x0, key, mask_id, schedule, t_min)
    weight = schedule.sigma(t) * absorbing.time_factor(sb)
    return -weight * masked_log_lik(log_p_fn(xt), x0, xt == mask_id)


def dse(log_p_fn, x0, key, *, mask_id: int, schedule=absorbing.LogLinear(), t_min=1e-3, **_):
    t, sb, xt = _at_t(x0, key, mask_id, schedule, t_min)
    a = absorbing.time_factor(sb)[:, None]                         # (B, 1)
    log_s = absorbing.concrete_log_score(log_p_fn(xt), sb)         # (B, L, V)
    log_s_x0 = jnp.take_along_axis(log_s, x0[..., None], axis=-1)[..., 0]
    per_token = jnp.sum(jnp.exp(log_s), axis=-1) - a * log_s_x0 + a * (jnp.log(a) - 1.0)
    return schedule.sigma(t) * jnp.sum(jnp.where(xt == mask_id, per_token, 0.0), axis=-1)


def k_dce(log_p_fn, x0, key, *, mask_id: int, **_):
    k_k, k_mask = jax.random.split(key)
    length = x0.shape[1]
    k = jax.random.randint(k_k, (x0.shape[0],), 1, length + 1)
    xt = absorbing.mask_exactly(k_mask, x0, k, mask_id)
    return -(length / k) * masked_log_lik(log_p_fn(xt), x0, xt == mask_id)


_FNS = {"lambda_dce": lambda_dce, "t_dce": t_dce, "dse": dse, "k_dce": k_dce}


def radd_loss(kind: str, log_p_fn, x0, key, *, mask_id: int, schedule=absorbing.LogLinear(),
              t_min: float = 1e-3):
    """Per-sequence loss (B,) in nats of ``kind`` (one of ``LOSSES``) for clean tokens x0 (B, L)."""
    if kind not in _FNS:
        raise ValueError(f"unknown RADD loss {kind!r}; expected one of {', '.join(LOSSES)}")
    return _FNS[kind](log_p_fn, x0, key, mask_id=mask_id, schedule=schedule, t_min=t_min)


def aoarm_nll(log_p_fn, x0, key, *, mask_id: int):
    """-log p_theta(x0) of the any-order autoregressive model for one uniformly drawn order per
    row: sum_j -log p_theta(x0^{o_j} | x0^{o_<j}), L network calls (an unbiased estimate of the
    k-DCE / lambda-DCE expectation). Returns (B,) nats."""
    b, length = x0.shape
    order = jnp.argsort(jax.random.uniform(key, (b, length)), axis=1)
    rank = jnp.argsort(order, axis=1)                  # rank[b, i]: when position i is revealed
    rows = jnp.arange(b)

    def body(total, j):
        xt = jnp.where(rank >= j, mask_id, x0)
        pos = order[:, j]
        lp = log_p_fn(xt)[rows, pos, x0[rows, pos]]
        return total - lp, None

    total, _ = jax.lax.scan(body, jnp.zeros((b,), jnp.float32), jnp.arange(length))
    return total
