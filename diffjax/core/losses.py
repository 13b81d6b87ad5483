"""Denoising score matching for every process and parameterization (one loss, many weightings).

For data x0, time t ~ p(t), x_t = alpha x0 + sigma eps (or the PFGM++ kernel), the EDM-frame input
x = x_t / alpha at noise level sigma_tilde = sigma / alpha, and a wrapped network
den(params, x, sigma, cond) -> x0_hat (core/denoisers.py):
    L = E_t [ w(t) * mean_dims || x0_hat - x0 ||^2 ].
Every parameterization's plain MSE is an x0-space MSE times a weight, so weightings are written in
x0 space as functions of snr = alpha^2 / sigma^2 = 1 / sigma_tilde^2:
    uniform        1                                   (x0-MSE)
    snr            snr                                 (eps-MSE, DDPM "L_simple"; Ho et al. 2020)
    min_snr        min(snr, gamma)                     (Min-SNR-gamma; Hang et al. 2023)
    truncated_snr  max(snr, 1)                         (Salimans & Ho 2022)
    edm            (sigma^2 + sd^2) / (sigma sd)^2     (EDM lambda; Karras et al. 2022)
    native         the weight that makes L the plain MSE of the network's own target
                   (eps: snr; x0: 1; v: (alpha^2 + sigma^2)^2 / sigma^2, = snr + 1 for VP;
                   flow: ((alpha sigma' - sigma alpha') / sigma)^2; edm: EDM lambda).
Time/noise samplers: 'uniform' in t, 'lognormal' (ln sigma ~ N(P_mean, P_std^2), EDM), 'logit_normal'
(Esser et al. 2024, flow), or any callable ``sampler(key, batch) -> t`` (e.g. a difficulty curriculum).
Label dropout trains the null condition for classifier-free guidance; CEP is applied inside models
(models/embeddings.py) through the 'cep' PRNG stream this loss provides.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from diffjax.core import processes as P
from diffjax.core.conditioning import drop_labels
from diffjax.core.denoisers import bcast

WEIGHTINGS = ("native", "uniform", "snr", "min_snr", "truncated_snr", "edm")
T_SAMPLERS = ("uniform", "lognormal", "logit_normal")


def weight(name: str, process: P.Process, t, *, parameterization: str = "eps", gamma: float = 5.0,
           sigma_data: float = 0.5):
    """x0-space loss weight w(t) (see module docstring)."""
    s_t = process.sigma_tilde(t)
    snr = 1.0 / s_t ** 2
    if name == "native":
        if parameterization == "eps":
            return snr
        if parameterization == "x0":
            return jnp.ones_like(snr)
        if parameterization == "edm":
            return weight("edm", process, t, sigma_data=sigma_data)
        a, s = process.alpha(t), process.sigma(t)
        if parameterization == "v":   # x0 = (a x_t - s v)/(a^2+s^2)  =>  |dv| = (a^2+s^2)/s |dx0|
            return (a ** 2 + s ** 2) ** 2 / s ** 2
        if parameterization == "flow":
            da, ds = process.velocity_coeffs(t)
            return ((a * ds - s * da) / s) ** 2
        raise ValueError(f"unknown parameterization {parameterization!r}")
    if name == "uniform":
        return jnp.ones_like(snr)
    if name == "snr":
        return snr
    if name == "min_snr":
        return jnp.minimum(snr, gamma)
    if name == "truncated_snr":
        return jnp.maximum(snr, 1.0)
    if name == "edm":
        return (s_t ** 2 + sigma_data ** 2) / (s_t * sigma_data) ** 2
    raise ValueError(f"unknown weighting {name!r}; expected one of {WEIGHTINGS}")


def time_sampler(name, process: P.Process, *, p_mean: float = -1.2, p_std: float = 1.2,
                 logit_mean: float = 0.0, logit_std: float = 1.0) -> Callable:
    """A function (key, batch) -> t in the process's own time."""
    if callable(name):
        return name
    if name == "uniform":
        if isinstance(process, P.DiscreteVP):
            return lambda key, b: jax.random.randint(key, (b,), 0, process.num_train_steps).astype(
                jnp.float32)
        return lambda key, b: jax.random.uniform(key, (b,), jnp.float32, process.t_min, process.t_max)
    if name == "lognormal":
        def draw(key, b):
            sig = jnp.exp(p_mean + p_std * jax.random.normal(key, (b,)))
            return process.t_from_sigma_tilde(sig)
        return draw
    if name == "logit_normal":
        def draw(key, b):
            u = jax.nn.sigmoid(logit_mean + logit_std * jax.random.normal(key, (b,)))
            return process.t_min + (process.t_max - process.t_min) * u
        return draw
    raise ValueError(f"unknown time sampler {name!r}; expected one of {T_SAMPLERS} or a callable")


def make_loss(den: Callable, process: P.Process, *, weighting: str = "native",
              t_sampler="uniform", parameterization: str | None = None, min_snr_gamma: float = 5.0,
              sigma_data: float = 0.5, label_dropout: float = 0.0, null_label: int | None = None,
              p_mean: float = -1.2, p_std: float = 1.2):
    """Build ``loss_fn(params, batch, key) -> (loss, aux)``; batch = {'x': x0, 'label': ... (opt)}.

    ``den`` is a wrapped network from ``denoisers.from_network`` (its parameterization is read from
    it unless given). ``aux`` holds the per-example loss, t and sigma_tilde.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; expected one of {WEIGHTINGS}")
    param = parameterization or getattr(den, "parameterization", "x0")
    draw_t = time_sampler(t_sampler, process, p_mean=p_mean, p_std=p_std)
    if label_dropout > 0 and null_label is None:
        raise ValueError("label_dropout > 0 needs null_label (the model's null class id)")

    def loss_fn(params, batch, key):
        if "x" not in batch:
            raise ValueError(f"batch needs key 'x' (clean data); got keys {sorted(batch)}")
        x0 = batch["x"].astype(jnp.float32)
        b = x0.shape[0]
        k_t, k_n, k_l, k_d, k_c = jax.random.split(key, 5)
        t = draw_t(k_t, b)
        x_t, _ = process.perturb(k_n, x0, t)
        alpha = process.alpha(t)
        x = x_t / bcast(alpha, x_t)
        sigma = process.sigma_tilde(t)
        cond = {k: v for k, v in batch.items() if k != "x"}
        if label_dropout > 0 and "label" in cond:
            cond["label"] = drop_labels(k_l, cond["label"], label_dropout, null_label)
        x0_hat = den(params, x, sigma, cond, train=True, rngs={"dropout": k_d, "cep": k_c})
        if x0_hat.shape != x0.shape:
            raise ValueError(f"denoiser returned shape {x0_hat.shape} for data of shape {x0.shape}")
        w = weight(weighting, process, t, parameterization=param, gamma=min_snr_gamma,
                   sigma_data=sigma_data)
        per_ex = jnp.mean((x0_hat - x0) ** 2, axis=tuple(range(1, x0.ndim))) * w
        loss = jnp.mean(per_ex)
        return loss, {"loss_per_example": per_ex, "t": t, "sigma": sigma}

    return loss_fn


def from_denoiser(D: Callable) -> Callable:
    """Adapt a contract denoiser D(x, sigma, cond) to the wrapped-network signature (no params)."""
    def den(params, x, sigma, cond=None, train=False, rngs=None):
        return D(x, sigma, cond)
    den.parameterization = "x0"
    return den


def value_and_grad_in_slices(loss_fn: Callable, slices: int) -> Callable:
    """``jax.value_and_grad(loss_fn, has_aux=True)`` computed on ``slices`` equal slices of the batch
    (slice i: rows i, i + slices, ...), one after another (``lax.scan``), gradients and losses averaged.

    For a loss that is the mean over examples (``make_loss``'s), the mean of the slice gradients is
    the gradient of the whole batch's loss; the randomness differs (slice i draws from
    fold_in(key, i)), not its distribution. Peak memory falls with the slice, and on a CPU the
    smaller working set can make the step faster (BENCHMARKS.md). ``aux`` arrays are per example,
    concatenated back in batch order, except ``aux['metrics']`` (scalars), averaged over slices. ``slices=1`` is plain value_and_grad.
    """
    vg = jax.value_and_grad(loss_fn, has_aux=True)
    if slices == 1:
        return vg
    if not isinstance(slices, int) or slices < 1:
        raise ValueError(f"slices must be a positive int; got {slices!r}")

    def fn(params, batch, key):
        b = jax.tree.leaves(batch)[0].shape[0]
        if b % slices:
            raise ValueError(f"batch of {b} examples does not split into {slices} equal slices")
        # slice i = rows i, i + slices, ...: with the batch sharded over devices, every device
        # keeps its own rows in every slice (no resharding).
        parts = jax.tree.map(
            lambda a: jnp.swapaxes(a.reshape((b // slices, slices) + a.shape[1:]), 0, 1), batch)

        def body(g_acc, xs):
            i, part = xs
            (loss, aux), g = vg(params, part, jax.random.fold_in(key, i))
            return jax.tree.map(jnp.add, g_acc, g), (loss, aux)

        zeros = jax.tree.map(jnp.zeros_like, params)
        g, (loss, aux) = jax.lax.scan(body, zeros, (jnp.arange(slices), parts))
        scalars = aux.pop("metrics", None) if isinstance(aux, dict) else None
        aux = jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1).reshape((b,) + a.shape[2:]), aux)
        if scalars is not None:
            aux["metrics"] = jax.tree.map(lambda a: jnp.mean(a, axis=0), scalars)
        return (jnp.mean(loss), aux), jax.tree.map(lambda a: a / slices, g)

    return fn
