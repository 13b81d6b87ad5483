"""The one denoiser interface and the parameterizations that wrap a network into it.

Contract (Karras et al. 2022): a denoiser is a pure function
    D(x, sigma, cond) -> x0_hat,       x = x0 + sigma * eps   (EDM frame, alpha = 1)
where sigma is a scalar or a (B,) array and cond is any pytree (labels, context, guidance scale...).
Guidance, search and samplers only ever see D. Conversions (EDM frame):
    eps_hat = (x - x0_hat) / sigma,   score = (x0_hat - x) / sigma^2   (Tweedie / Efron).
In a process's own frame x_t = alpha x0 + sigma eps:
    v = alpha eps - sigma x0 (Salimans & Ho 2022),  u = alpha' x0 + sigma' eps (flow velocity).

Parameterizations (``from_network``) wrap ``apply_fn(params, x_in, noise_label, labels=, context=,
train=, rngs=)`` into D with explicit params:
    eps : x0 = (x_t - sigma eps_net) / alpha                         (Ho et al. 2020)
    x0  : x0 = net
    v   : x0 = (alpha x_t - sigma v_net) / (alpha^2 + sigma^2)       (Salimans & Ho 2022)
    flow: x0 = (sigma' x_t - sigma u_net) / (alpha sigma' - sigma alpha')   (Lipman/Liu 2023)
    edm : x0 = c_skip x + c_out F(c_in x, ln(sigma)/4),  c_skip = sd^2/(s^2+sd^2),
          c_out = s sd / sqrt(s^2+sd^2), c_in = 1/sqrt(s^2+sd^2)   (Karras et al. 2022, Table 1)
    consistency: EDM's form with the boundary shifted to s_min (Song et al. 2023, Appendix C):
          c_skip = sd^2/((s - s_min)^2 + sd^2), c_out = (s - s_min) sd / sqrt(s^2 + sd^2), so
          D(x, s_min) = x exactly (the consistency function's boundary condition f(x, s_min) = x)
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from diffjax.core import processes as P

Denoiser = Callable[[jax.Array, jax.Array, Any], jax.Array]
PARAMETERIZATIONS = ("eps", "x0", "v", "flow", "edm", "consistency")


def bcast(v, x):
    """Reshape a scalar or (B,) array to broadcast against x (B, ...)."""
    v = jnp.asarray(v, jnp.float32)
    if v.ndim == 0:
        return v
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def eps_from_x0(x, sigma, x0):
    return (x - x0) / bcast(sigma, x)


def x0_from_eps(x, sigma, eps):
    return x - bcast(sigma, x) * eps


def score_from_x0(x, sigma, x0):
    """grad_x log p_sigma(x) = (D(x, sigma) - x) / sigma^2 (Tweedie)."""
    return (x0 - x) / bcast(sigma, x) ** 2


def x0_from_score(x, sigma, score):
    return x + bcast(sigma, x) ** 2 * score


def v_from_x0(alpha, sigma, x0, eps):
    return alpha * eps - sigma * x0


def velocity_from_x0(process: P.Process, t, x_t, x0):
    """Probability-flow velocity dx_t/dt = alpha'(t) x0_hat + sigma'(t) eps_hat (process frame)."""
    a, s = bcast(process.alpha(t), x_t), bcast(process.sigma(t), x_t)
    da, ds = process.velocity_coeffs(t)
    eps = (x_t - a * x0) / s
    return bcast(da, x_t) * x0 + bcast(ds, x_t) * eps


def _sigma_vec(sigma, x):
    sigma = jnp.asarray(sigma, jnp.float32)
    return jnp.broadcast_to(sigma, (x.shape[0],))


# Entries of ``cond`` passed to the network as keyword arguments of the same name, besides the
# labels and context: per-example ones (one row per example; sliced with the batch) and per-call
# ones (one value for the whole call).
ROW_INPUTS = ("guidance",)          # a guidance-distilled student's scale w (models' guidance_embed)
CALL_INPUTS = ("exit_threshold",)   # an early-exit network's confidence threshold (DeeDiff)


def _mean_part(out, x):
    """A learned-variance network (DiT / ADM / IDDPM ``learn_sigma``: 2C output channels for C
    input channels) predicts the mean parameterization in its first C channels: keep those."""
    c = x.shape[-1]
    if out.shape[:-1] == x.shape[:-1] and out.shape[-1] == 2 * c:
        return out[..., :c]
    return out


def _net(apply_fn, params, x_in, label, cond, train, rngs, max_batch=None):
    cond = cond or {}
    kw = {k: cond[k] for k in CALL_INPUTS if cond.get(k) is not None}
    if rngs is not None:
        kw["rngs"] = rngs
    call = lambda a: _mean_part(apply_fn(params, a["x"], a["t"], labels=a.get("label"),
                                         context=a.get("context"), train=train, **kw,
                                         **{k: a[k] for k in ROW_INPUTS if k in a}),
                                a["x"]).astype(jnp.float32)
    args = {"x": x_in, "t": label, **{k: cond[k] for k in ("label", "context")
                                       if cond.get(k) is not None}}
    for k in ROW_INPUTS:
        if cond.get(k) is not None:
            args[k] = jnp.broadcast_to(jnp.asarray(cond[k], jnp.float32), (x_in.shape[0],))
    b = x_in.shape[0]
    if train or not max_batch or b <= max_batch:
        return call(args)
    for k, v in args.items():
        if jnp.ndim(v) == 0 or jnp.shape(v)[0] != b:
            raise ValueError(f"max_batch={max_batch} slices every input along the batch axis, but "
                             f"{'cond[' + repr(k) + ']' if k in ('label', 'context') else k} has "
                             f"shape {jnp.shape(v)} for a batch of {b}; give it one row per example")
    return _in_chunks(call, args, b, max_batch)


def _in_chunks(call, args, b, size):
    """call(args) computed as ceil(b / size) calls on consecutive batch slices of ``size`` rows (a
    lax.map; the last slice padded by repeating the final row, the padding dropped after)."""
    n = -(-b // size)
    pad = n * size - b

    def split(a):
        a = jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]) if pad else a
        return a.reshape((n, size) + a.shape[1:])

    out = jax.lax.map(call, jax.tree.map(split, args))
    return out.reshape((n * size,) + out.shape[2:])[:b]


def from_network(apply_fn: Callable, process: P.Process, parameterization: str = "eps",
                 sigma_data: float = 0.5, max_batch: Optional[int] = None,
                 sigma_min: Optional[float] = None):
    """Wrap a network into ``den(params, x, sigma, cond, train=False, rngs=None) -> x0_hat``.

    ``x`` and ``sigma`` are in the EDM frame; the wrapper maps them to the process's time
    t = t_from_sigma_tilde(sigma) and input x_t = alpha(t) x for the network. ``max_batch``: inference
    calls (train=False) on a larger batch run the network on slices of at most this many rows, one
    after another (same values; on a CPU the smaller working set can be faster per image, BENCHMARKS.md).
    ``sigma_min`` (consistency only; default: the process's smallest noise level) is the boundary.
    """
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"unknown parameterization {parameterization!r}; expected one of "
                         f"{PARAMETERIZATIONS}")
    if max_batch is not None and (not isinstance(max_batch, int) or max_batch < 1):
        raise ValueError(f"max_batch must be a positive int or None; got {max_batch!r}")

    s_min = float(process.sigma_tilde_range()[0] if sigma_min is None else sigma_min)

    def den(params, x, sigma, cond=None, train: bool = False, rngs=None):
        s = _sigma_vec(sigma, x)
        xf = x.astype(jnp.float32)
        if parameterization in ("edm", "consistency"):
            sd = sigma_data
            shift = s - s_min if parameterization == "consistency" else s
            c_skip = sd ** 2 / (shift ** 2 + sd ** 2)
            c_out = shift * sd / jnp.sqrt(s ** 2 + sd ** 2)
            c_in = 1.0 / jnp.sqrt(s ** 2 + sd ** 2)
            F = _net(apply_fn, params, bcast(c_in, xf) * xf, jnp.log(s) / 4.0, cond, train, rngs,
                     max_batch)
            return bcast(c_skip, xf) * xf + bcast(c_out, xf) * F
        t = process.t_from_sigma_tilde(s)
        a, sg = process.alpha(t), process.sigma(t)
        x_t = bcast(a, xf) * xf
        out = _net(apply_fn, params, x_t, process.noise_label(t), cond, train, rngs, max_batch)
        a, sg = bcast(a, xf), bcast(sg, xf)
        if parameterization == "eps":
            return (x_t - sg * out) / a
        if parameterization == "x0":
            return out
        if parameterization == "v":
            return (a * x_t - sg * out) / (a ** 2 + sg ** 2)
        da, ds = process.velocity_coeffs(t)
        da, ds = bcast(da, xf), bcast(ds, xf)
        return (ds * x_t - sg * out) / (a * ds - sg * da)

    den.parameterization = parameterization
    den.process = process
    return den


def network_target(parameterization: str, process: P.Process, t, x0, eps, sigma_data: float = 0.5):
    """What the raw network output should equal for (x0, eps) at process time t (for reference)."""
    a, s = bcast(process.alpha(t), x0), bcast(process.sigma(t), x0)
    if parameterization == "eps":
        return eps
    if parameterization == "x0":
        return x0
    if parameterization == "v":
        return v_from_x0(a, s, x0, eps)
    if parameterization == "flow":
        da, ds = process.velocity_coeffs(t)
        return bcast(da, x0) * x0 + bcast(ds, x0) * eps
    raise ValueError(f"no closed-form raw target for {parameterization!r}")


def bind(den: Callable, params, train: bool = False, rngs=None) -> Denoiser:
    """Close ``den(params, x, sigma, cond, ...)`` over params: returns the contract D(x, sigma, cond)."""
    return lambda x, sigma, cond=None: den(params, x, sigma, cond, train=train, rngs=rngs)
