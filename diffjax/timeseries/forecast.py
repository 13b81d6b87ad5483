"""TSDiff's three uses of one unconditional series model (Kollovieh et al., NeurIPS 2023): predict
(self-guided forecasting and imputation), refine (a base forecaster's samples improved on the
model's implicit density), synthesize (train-on-synthetic, test-on-real).

    f = forecast(run, contexts, num_samples=16, scale=4.0)           # (K, S, H) in data units
    x = impute(run, windows, mask, num_samples=16)                    # (K, S, L, C), scaled units
    y = refine(run, init, observed, mask, method='lmc', key=key)      # scaled units
    r = tstr(run, split, num=512)                                     # linear model: real vs synth

The run is a ``diffjax train`` run on the 'series' data source (``configs/timeseries_*.py``): its
windows are (context + horizon, 1) scaled by ``config.data.scaling`` from each context
(series.py); ``forecast`` scales the given contexts the same way and unscales its samples.

Refinement (Sec. 3.2): with the model's denoising loss at a fixed level sigma_tau as an energy,
    E(y) = || D(y + sigma_tau eps, sigma_tau) - y ||^2 / sigma_tau^2 + lambda R(y)
(= || eps - eps_theta ||^2 of the paper: in the EDM frame eps - eps_hat = (D - y) / sigma), eps
fresh at every iteration, R the squared error to the observed context (``reg='mse'``) or the
pinball loss of sample i (quantile i / (S + 1)) to the context and the base forecast over the whole
window (``reg='quantile'``: the base forecast acts as a prior). ``method='sgd'``: y <- y - lr grad E
(the paper's "most likely" refinement); ``'lmc'``: Langevin y <- y - lr grad E + sqrt(2 lr) nu xi.
tau is the process's own time (TSDiff: discrete step 20 of 100).
"""
from __future__ import annotations

import numpy as np

from diffjax.timeseries import self_guidance as sg
from diffjax.timeseries.series import window_stats

REFINE_METHODS = ("sgd", "lmc")
REGULARIZERS = ("mse", "quantile")


def _window_config(run):
    d = run.config.data
    if d.get("name") != "series":
        raise ValueError(f"the run was trained on data source {d.get('name')!r}; forecasting needs "
                         f"a 'series' run (configs/timeseries_sunspots.py)")
    return int(d.context), int(d.horizon), d.get("scaling", "mean")


def quantiles(num_samples: int) -> np.ndarray:
    """q_i = i / (S + 1), i = 1..S: the quantile energy's level of each of S samples."""
    return np.arange(1, num_samples + 1, dtype=np.float32) / (num_samples + 1)


def guided_draw(run, observed, mask, *, num_samples: int, scale: float, energy: str = "quantile",
                form: str = "ddim", sampler: str = "ddim", steps: int = 50, seed: int = 0,
                batch_size: int | None = None) -> np.ndarray:
    """S self-guided samples (K, S, L, C) of each scaled window's unobserved entries."""
    from diffjax import inference

    observed = np.asarray(observed, np.float32)
    mask = np.asarray(mask, np.float32)
    k = observed.shape[0]
    if tuple(observed.shape[1:]) != tuple(run.example_shape):
        raise ValueError(f"observed windows have shape {observed.shape[1:]}, the run's examples "
                         f"{tuple(run.example_shape)}")
    rep = lambda a: np.repeat(a, num_samples, axis=0)
    cond = {sg.OBSERVED: rep(observed), sg.MASK: rep(np.broadcast_to(mask, observed.shape)),
            sg.QUANTILE: np.tile(quantiles(num_samples), k)}
    sec = {"name": "tsdiff", "scale": float(scale), "energy": energy, "form": form}
    x = inference.generate(run, k * num_samples, sampler=sampler, steps=steps, guidance=sec,
                           seed=seed, cond=cond, clip=False, batch_size=batch_size)
    return np.asarray(x).reshape((k, num_samples) + tuple(run.example_shape))


def forecast(run, contexts, *, num_samples: int = 16, scale: float = 4.0,
             energy: str = "quantile", **kw) -> np.ndarray:
    """Self-guided forecasts (K, S, horizon) in the contexts' units; contexts (K, context)."""
    context, horizon, kind = _window_config(run)
    c = np.asarray(contexts, np.float64)
    if c.ndim != 2 or c.shape[1] != context:
        raise ValueError(f"contexts must be (K, {context}) (the run's config.data.context), got "
                         f"{c.shape}")
    loc, sc = window_stats(c, kind)
    obs = np.zeros((len(c), context + horizon, 1), np.float32)
    obs[:, :context, 0] = (c - loc[:, None]) / sc[:, None]
    mask = np.zeros_like(obs)
    mask[:, :context] = 1.0
    x = guided_draw(run, obs, mask, num_samples=num_samples, scale=scale, energy=energy, **kw)
    return x[:, :, context:, 0] * sc[:, None, None] + loc[:, None, None]


def impute(run, windows, mask, *, num_samples: int = 16, scale: float = 4.0,
           energy: str = "quantile", **kw) -> np.ndarray:
    """Self-guided imputations (K, S, L, C) of scaled windows (K, L, C) where ``mask`` is 0."""
    return guided_draw(run, windows, mask, num_samples=num_samples, scale=scale, energy=energy,
                       **kw)


def refine_energy(den, params, y, eps, sigma, observed, mask, reg: str, reg_scale, q, prior):
    """E(y) per example: the denoising loss at sigma plus reg_scale R(y) (module doc)."""
    import jax.numpy as jnp

    x0 = den(params, y + sigma * eps, jnp.full((y.shape[0],), sigma, jnp.float32), None)
    loss = jnp.sum(((x0 - y) ** 2).reshape(y.shape[0], -1), 1) / sigma ** 2
    if reg == "mse":
        r = jnp.sum((mask * (y - observed) ** 2).reshape(y.shape[0], -1), 1)
    elif reg == "quantile":
        target = mask * observed + (1 - mask) * prior
        e = target - y
        r = jnp.sum(((q[:, None, None] - (e < 0)) * e).reshape(y.shape[0], -1), 1)
    else:
        raise ValueError(f"refine: reg must be one of {REGULARIZERS}, got {reg!r}")
    return loss + reg_scale * r


def refine(run, init, observed, mask, *, key, method: str = "lmc", reg: str = "mse",
           tau: float = 20.0, sigma: float | None = None, iters: int = 20, lr: float = 0.1,
           noise_scale: float = 0.1, reg_scale: float = 1.0, q=None,
           params_name: str | None = None) -> np.ndarray:
    """Refined samples (B, L, C) from ``init`` (scaled windows, the base forecast in the unobserved
    part); ``q`` (B,) the quantile of each sample for reg='quantile' (default i / (B + 1)). The
    energy's noise level: ``sigma`` when given, else ``process.sigma_tilde(tau)`` with tau in the
    run's process time (TSDiff's default, step 20 of a 100-step discrete process); a tau outside
    the process's time range is an error naming both."""
    import jax.numpy as jnp

    from diffjax.core import processes as P
    from diffjax.inference import pick_params

    if sigma is None:
        proc = run.process
        lo, hi = ((0.0, float(proc.num_train_steps - 1)) if isinstance(proc, P.DiscreteVP)
                  else (float(proc.t_min), float(proc.t_max)))
        if not lo <= tau <= hi:
            raise ValueError(f"refine: tau={tau} is outside the run's process time [{lo:g}, "
                             f"{hi:g}] ({type(proc).__name__}); pass tau in that range, or the "
                             f"noise level itself as sigma=")
        sigma = float(proc.sigma_tilde(jnp.float32(tau)))
    elif not sigma > 0:
        raise ValueError(f"refine: sigma must be a positive noise level, got {sigma}")
    params = pick_params(run.params, params_name or run.config.sample.params)
    return refine_with(run.den, params, sigma, init, observed, mask, key=key, method=method,
                       reg=reg, iters=iters, lr=lr, noise_scale=noise_scale, reg_scale=reg_scale,
                       q=q)


def refine_with(den, params, sigma: float, init, observed, mask, *, key, method: str = "lmc",
                reg: str = "mse", iters: int = 20, lr: float = 0.1, noise_scale: float = 0.1,
                reg_scale: float = 1.0, q=None) -> np.ndarray:
    """``refine`` for any denoiser ``den(params, x, sigma, cond)`` at the level ``sigma``."""
    import jax
    import jax.numpy as jnp

    if method not in REFINE_METHODS:
        raise ValueError(f"refine: method must be one of {REFINE_METHODS}, got {method!r}")
    if reg not in REGULARIZERS:
        raise ValueError(f"refine: reg must be one of {REGULARIZERS}, got {reg!r}")
    init = jnp.asarray(init, jnp.float32)
    b = init.shape[0]
    q = jnp.asarray(quantiles(b) if q is None else q, jnp.float32)
    observed = jnp.asarray(observed, jnp.float32)
    mask = jnp.broadcast_to(jnp.asarray(mask, jnp.float32), init.shape)

    def e_total(y, eps):
        return jnp.sum(refine_energy(den, params, y, eps, sigma, observed, mask, reg, reg_scale,
                                     q, init))

    grad = jax.grad(e_total)

    @jax.jit
    def loop(y0, key):
        def body(i, y):
            k_eps, k_lmc = jax.random.split(jax.random.fold_in(key, i))
            y = y - lr * grad(y, jax.random.normal(k_eps, y.shape))
            if method == "lmc":
                y = y + jnp.sqrt(2.0 * lr) * noise_scale * jax.random.normal(k_lmc, y.shape)
            return y
        return jax.lax.fori_loop(0, iters, body, y0)

    return np.asarray(loop(init, key))


def langevin(grad_e, y0, *, key, iters: int, lr: float, noise_scale: float = 1.0):
    """The Langevin chain refine uses, for any energy gradient: y <- y - lr g + sqrt(2 lr) nu xi."""
    import jax
    import jax.numpy as jnp

    def body(i, y):
        xi = jax.random.normal(jax.random.fold_in(key, i), y.shape)
        return y - lr * grad_e(y) + jnp.sqrt(2.0 * lr) * noise_scale * xi

    return jax.jit(lambda y: jax.lax.fori_loop(0, iters, body, y))(y0)


def tstr(run, split, *, num: int = 512, ridge: float = 1e-2, steps: int = 50, seed: int = 0):
    """Train-on-synthetic, test-on-real (Sec. 5.3): a linear forecaster fitted on ``num``
    unconditional samples vs on the real training windows, both scored on the real test windows
    (MSE and normalized CRPS in scaled units). Returns {'real': {...}, 'synthetic': {...}}."""
    from diffjax import inference
    from diffjax.timeseries import baselines, metrics
    from diffjax.timeseries.series import scale_windows

    context, horizon, kind = _window_config(run)
    real, _, _ = scale_windows(split.train, context, kind)
    synth = np.asarray(inference.generate(run, num, sampler="ddim", steps=steps, seed=seed,
                                          clip=False))[..., 0]
    loc, sc = window_stats(split.test_context, kind)
    tc = (split.test_context - loc[:, None]) / sc[:, None]
    ty = (split.test_target - loc[:, None]) / sc[:, None]
    out = {}
    for name, w in (("real", real[..., 0]), ("synthetic", synth)):
        lin = baselines.fit_linear(w[:, :context], w[:, context:], ridge)
        pred = lin.predict(tc)
        out[name] = {"mse": float(((pred - ty) ** 2).mean()),
                     "ncrps": metrics.normalized_crps(lin.sample(tc, 100, seed), ty)}
    return out
