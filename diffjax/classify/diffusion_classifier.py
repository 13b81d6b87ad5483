"""The Diffusion Classifier (Li, Prabhudesai, Duggal, Brown, Pathak, "Your Diffusion Model is
Secretly a Zero-Shot Classifier", ICCV 2023, arXiv:2303.16203): Bayes' rule with the denoising
error as the proxy for -log p(x | c),

    c_hat = argmin_c  err_c,   err_c = mean_j  l( eps_j - eps_hat(x_j, sigma_j, c) ),
    x_j = x0 + sigma_j eps_j   (EDM frame; = x_t / alpha of x_t = alpha x0 + sigma eps, same eps),

with uniform weights over the (t_j, eps_j) pairs and l the mean over dimensions of the squared
('l2', the paper's default), absolute ('l1') or Huber ('huber', delta 1) error. The same pairs are
used for every class (paired Monte Carlo: the shared noise cancels from the comparison; a class
model identical to another ties with it bit for bit).

eps from x0 (written once, ``eps_error``): diffjax denoisers return x0_hat, and in the EDM frame
eps_hat = (x - x0_hat) / sigma (core/denoisers.eps_from_x0), so with x - x0 = sigma eps

    eps - eps_hat = (x0_hat - x0) / sigma,

i.e. the eps-error is the x0-error with weight 1 / sigma^2 (= snr, losses.weight('snr')). We use
the right-hand side: it is the same number without the cancellation of x - x0_hat at small sigma.

The (t, eps) grid. With n_max = max(n_samples), the base grid has n_max times t_0 .. t_{n_max-1}:
  * discrete process (DiscreteVP, T = num_train_steps, trained with uniform integer t; the paper's
    case): t_i = T // n_max // 2 + i (T // n_max), as the official eval_prob_adaptive.py
    (T = 1000, n_max = 500: t = 1, 3, ..., 999);
  * any other process: the midpoint quantiles u_i = (i + 1/2) / n_max of the noise-level
    distribution the run was trained on (config.diffusion.t_sampler: uniform in t, log-normal
    sigma, logit-normal t), t_i = F^-1(u_i). For DiscreteVP with uniform t this is the rule above
    whenever n_max divides T, so the paper's "uniform over its training timesteps" carries over
    to every process as "evenly spread over its training noise levels" (EDM: ln sigma_i =
    P_mean + P_std Phi^-1(u_i)).
eps_i: one draw per grid index i and image n, from fold_in(fold_in(key, n), i) through the
process's own forward kernel (``process.perturb``; Gaussian for all but PFGM++), shared by all
classes; so results do not depend on the batch size, the number of images or the mesh.

Adaptive elimination (the paper's Sec. 3.2 / eval_prob_adaptive.py): round k evaluates the
surviving classes on the evenly strided subset grid[n_max // n_k // 2 :: n_max // n_k][:n_k]
minus the indices evaluated already (later rounds extend, never repeat, earlier ones), adds the
errors to each class's running mean over all its evaluated pairs, and keeps the to_keep[k] classes
of lowest mean (ties: the class listed first in ``classes``). The last to_keep is 1: the
prediction. Cost per image = sum_k (surviving classes in round k) x (new indices of round k);
CIFAR-10's schedule (to_keep 5, 1; n_samples 50, 500) is 10 x 50 + 5 x 450 = 2,750 network
calls, ImageNet's 124,500 instead of the naive 1000 x 1000.

    res = classify(run, images, key=jax.random.key(0), schedule="cifar10")
    res.pred (N,), res.errors (N, C) mean error per class, res.nfe (per image)

Each round is one jitted call over every (image, surviving class, new pair) row, in network
batches of ``batch_size`` rows (lax.map; memory stays bounded), each batch sharded over the mesh's
data axes.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.core import denoisers
from diffjax.core import processes as P

LOSSES = ("l2", "l1", "huber")


class Schedule(NamedTuple):
    """Adaptive elimination: round k evaluates n_samples[k] grid points (cumulative) and keeps
    to_keep[k] classes; ``loss`` is the per-pair error."""
    n_samples: tuple
    to_keep: tuple
    loss: str = "l2"


# The paper's schedules (commands.md of the official code; the method card's table) and two of
# our own: 'dit' is the exhaustive DiT evaluation (t = 2, 6, ..., 998, one pass over all classes)
# and 'fast' a cheap one for small models and tests.
SCHEDULES = {
    "cifar10": Schedule((50, 500), (5, 1), "l1"),
    "pets": Schedule((25, 250), (5, 1), "l1"),
    "stl10": Schedule((100, 500), (5, 1), "l1"),
    "flowers": Schedule((20, 50, 100, 500), (20, 10, 5, 1), "l1"),
    "food": Schedule((20, 50, 100, 500), (20, 10, 5, 1), "l2"),
    "aircraft": Schedule((20, 50, 100, 500), (20, 10, 5, 1), "l2"),
    "imagenet": Schedule((50, 100, 500, 1000), (500, 50, 10, 1), "l2"),
    "objectnet": Schedule((50, 100, 500, 1000), (25, 10, 5, 1), "l2"),
    "dit": Schedule((250,), (1,), "l2"),
    "fast": Schedule((10, 50), (3, 1), "l2"),
}


class ClassifyResult(NamedTuple):
    pred: np.ndarray        # (N,) predicted class ids (from ``classes``)
    errors: np.ndarray      # (N, C) each class's mean error over the pairs it was evaluated on
    counts: np.ndarray      # (N, C) how many (t, eps) pairs each class was evaluated on
    kept: tuple             # per round, (N, to_keep[k]) the class ids kept, best first
    nfe: int                # network evaluations per image (padding rows not counted)
    classes: np.ndarray     # (C,) the candidate class ids, in the order of ``errors``' columns


def get_schedule(schedule) -> Schedule:
    """A Schedule from a name in SCHEDULES or a Schedule / (n_samples, to_keep[, loss]) tuple,
    checked: equal lengths, positive entries, to_keep non-increasing and ending in 1."""
    if isinstance(schedule, str):
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
        return SCHEDULES[schedule]
    s = Schedule(*schedule)
    n, k = tuple(int(v) for v in s.n_samples), tuple(int(v) for v in s.to_keep)
    if not n or len(n) != len(k):
        raise ValueError(f"schedule: n_samples {n} and to_keep {k} must be non-empty and of "
                         f"equal length")
    if min(n) < 1 or min(k) < 1:
        raise ValueError(f"schedule: n_samples {n} and to_keep {k} must be positive")
    if any(b > a for a, b in zip(k, k[1:])) or k[-1] != 1:
        raise ValueError(f"schedule: to_keep {k} must be non-increasing and end in 1 (the last "
                         f"round returns one class)")
    if s.loss not in LOSSES:
        raise ValueError(f"schedule: unknown loss {s.loss!r}; valid: {', '.join(LOSSES)}")
    return Schedule(n, k, s.loss)


def round_indices(n_samples: Sequence[int]) -> list[np.ndarray]:
    """The new base-grid indices each round evaluates (disjoint; their union up to round k is
    round k's strided subset): grid[n_max // n // 2 :: n_max // n][:n] minus earlier rounds'."""
    n_max = max(n_samples)
    seen, out = set(), []
    for n in n_samples:
        stride = n_max // n
        sub = [i for i in range(stride // 2, n_max, stride)[:n] if i not in seen]
        seen.update(sub)
        out.append(np.asarray(sub, np.int32))
    return out


def survivors_per_round(to_keep: Sequence[int], num_classes: int) -> list[int]:
    """How many classes each round evaluates: C, then min(to_keep[k-1], ...)."""
    alive, out = num_classes, []
    for k in to_keep:
        out.append(alive)
        alive = min(alive, k)
    return out


def nfe(schedule, num_classes: int) -> int:
    """Network evaluations per image: sum_k (classes in round k) x (new indices of round k)."""
    s = get_schedule(schedule)
    return sum(a * len(i) for a, i in zip(survivors_per_round(s.to_keep, num_classes),
                                          round_indices(s.n_samples)))


def time_grid(process: P.Process, n: int, t_sampler: str = "uniform", *, p_mean: float = -1.2,
              p_std: float = 1.2, logit_mean: float = 0.0, logit_std: float = 1.0) -> np.ndarray:
    """The n base-grid times in the process's own time (module docstring): DiscreteVP with
    uniform t, the official integer grid; otherwise the midpoint quantiles of ``t_sampler``."""
    u = (np.arange(n, dtype=np.float64) + 0.5) / n
    if t_sampler == "uniform":
        if isinstance(process, P.DiscreteVP):
            T = process.num_train_steps
            if n > T:
                raise ValueError(f"schedule: {n} grid points exceed the process's {T} timesteps")
            return (T // n // 2 + np.arange(n) * (T // n)).astype(np.float32)
        return (process.t_min + u * (process.t_max - process.t_min)).astype(np.float32)
    if t_sampler == "lognormal":
        sig = np.exp(p_mean + p_std * _ndtri(u))
        lo, hi = process.sigma_tilde_range()
        sig = np.clip(sig, lo, hi)
        return np.asarray(process.t_from_sigma_tilde(jnp.asarray(sig, jnp.float32)), np.float32)
    if t_sampler == "logit_normal":
        v = 1.0 / (1.0 + np.exp(-(logit_mean + logit_std * _ndtri(u))))
        return (process.t_min + v * (process.t_max - process.t_min)).astype(np.float32)
    raise ValueError(f"unknown time sampler {t_sampler!r}; the classifier's grid needs uniform, "
                     f"lognormal or logit_normal")


def _ndtri(u):
    """Phi^-1(u), the standard normal quantile (float64 numpy)."""
    return np.asarray(jax.scipy.special.ndtri(jnp.asarray(u, jnp.float32)), np.float64)


def eps_error(x0, x0_hat, sigma):
    """eps - eps_hat = (x0_hat - x0) / sigma for x = x0 + sigma eps (module docstring)."""
    return (x0_hat - x0) / denoisers.bcast(sigma, x0)


def pair_loss(diff, loss: str):
    """Mean over all but the first axis of l(diff): l2 diff^2, l1 |diff|, huber (delta 1)."""
    if loss == "l2":
        v = diff ** 2
    elif loss == "l1":
        v = jnp.abs(diff)
    elif loss == "huber":
        a = jnp.abs(diff)
        v = jnp.where(a < 1.0, 0.5 * diff ** 2, a - 0.5)
    else:
        raise ValueError(f"unknown loss {loss!r}; valid: {', '.join(LOSSES)}")
    return jnp.mean(v, axis=tuple(range(1, diff.ndim)))


@functools.lru_cache(maxsize=64)
def _round_fn(den, process, loss: str, example_shape: tuple, n_img: int, k: int, j: int,
              batch: int, mesh):
    """The jitted round: errors (n_img, k, j) of every (image, class, pair) row."""
    rows = n_img * k * j
    chunks = -(-rows // batch)
    rep = bsh = None
    if mesh is not None:
        from diffjax.training import sharding
        rep, bsh = sharding.replicated(mesh), sharding.batch_sharding(mesh)

    def constrain(a, s):
        return a if s is None else jax.lax.with_sharding_constraint(a, s)

    def fn(params, key, x0, image_ids, labels, t, grid_ids):
        params = constrain(params, rep)

        def one_batch(r):
            r = jnp.minimum(r, rows - 1)        # the padding rows repeat the last row
            n, rest = r // (k * j), r % (k * j)
            c, i = rest // j, rest % j
            keys = jax.vmap(lambda a, b: jax.random.fold_in(jax.random.fold_in(key, a), b))(
                image_ids[n], grid_ids[i])
            x0r, tr = x0[n], t[i]
            x_t = jax.vmap(lambda kk, x, tt: process.perturb(kk, x[None], tt)[0][0])(keys, x0r, tr)
            x = x_t / denoisers.bcast(process.alpha(tr), x_t)
            sig = process.sigma_tilde(tr)
            x0_hat = den(params, constrain(x, bsh), constrain(sig, bsh),
                       {"label": constrain(labels[n, c].astype(jnp.int32), bsh)})
            return constrain(pair_loss(eps_error(x0r, x0_hat, sig), loss), bsh)

        r = jnp.arange(chunks * batch, dtype=jnp.int32).reshape(chunks, batch)
        err = jax.lax.map(one_batch, r).reshape(-1)[:rows]
        return err.reshape(n_img, k, j)

    if mesh is None:
        return jax.jit(fn)
    from diffjax.training import sharding
    return jax.jit(sharding.tracing_mesh(fn, mesh), out_shardings=rep)


def diffusion_classify(den, params, process: P.Process, x0, *, key, schedule="cifar10",
                       classes: Sequence[int] | int = 10, t_grid=None, batch_size: int = 512,
                       mesh=None, first_index: int = 0) -> ClassifyResult:
    """Classify images ``x0`` (N, *shape), in the data range, with the class-conditional
    ``den(params, x, sigma, {'label': (B,)}) -> x0_hat`` of ``process`` (module docstring).

    ``classes``: the candidate class ids (or their number C: 0 .. C-1). ``t_grid``: the n_max base
    times (default ``time_grid(process, n_max)``, uniform t). ``batch_size``: rows per network
    call (rounded up to the mesh's batch shards). Image n draws its noise from
    fold_in(key, first_index + n). Elimination runs on the host between the rounds."""
    s = get_schedule(schedule)
    classes = np.arange(classes) if np.ndim(classes) == 0 else np.asarray(classes)
    classes = classes.astype(np.int32)
    if classes.ndim != 1 or len(classes) < 1 or len(np.unique(classes)) != len(classes):
        raise ValueError(f"classes must be distinct class ids, got {classes.tolist()}")
    x0 = jnp.asarray(x0, jnp.float32)
    N, C = x0.shape[0], len(classes)
    n_max = max(s.n_samples)
    t_grid = time_grid(process, n_max) if t_grid is None else np.asarray(t_grid, np.float32)
    if t_grid.shape != (n_max,):
        raise ValueError(f"t_grid has shape {t_grid.shape}; the schedule needs ({n_max},)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rep = None
    if mesh is not None:
        from diffjax.training import sharding
        rep = sharding.replicated(mesh)
    from diffjax.inference.draws import global_arrays

    sums = np.zeros((N, C), np.float64)
    counts = np.zeros((N, C), np.int64)
    alive = np.tile(np.arange(C), (N, 1))                       # positions into classes
    image_ids = np.arange(first_index, first_index + N, dtype=np.int32)
    kept, total = [], 0
    args = global_arrays((key, x0, image_ids), rep)
    for idx, keep in zip(round_indices(s.n_samples), s.to_keep):
        k, j = alive.shape[1], len(idx)
        if j:
            b = min(batch_size, N * k * j)
            if mesh is not None:
                from diffjax.inference.program import padded_batch
                b = padded_batch(b, mesh)
            fn = _round_fn(den, process, s.loss, tuple(x0.shape[1:]), N, k, j, b, mesh)
            err = fn(params, *args, *global_arrays((classes[alive], t_grid[idx], idx), rep))
            err = np.asarray(jax.device_get(err), np.float64)     # (N, k, j)
            rows = np.arange(N)[:, None]
            sums[rows, alive] += err.sum(-1)
            counts[rows, alive] += j
            total += k * j
        mean = sums[np.arange(N)[:, None], alive] / np.maximum(counts[np.arange(N)[:, None],
                                                                      alive], 1)
        order = np.argsort(mean, axis=1, kind="stable")[:, :min(keep, k)]
        best = np.take_along_axis(alive, order, 1)
        kept.append(classes[best])
        alive = np.sort(best, axis=1)          # positions ascending: ties go to the first listed
    errors = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return ClassifyResult(pred=kept[-1][:, 0], errors=errors, counts=counts, kept=tuple(kept),
                          nfe=int(total), classes=classes)


def classify(run, images, *, key, schedule="cifar10", classes: Sequence[int] | None = None,
             batch_size: int | None = None, params_name: str | None = None,
             first_index: int = 0) -> ClassifyResult:
    """Zero-shot classification of ``images`` (N, *run.example_shape) in the run's data range with
    a trained class-conditional run (``inference.load``): its conditional model, no guidance, its
    parameter set ``params_name`` (default config.sample.params), the time grid of its training
    noise distribution (config.diffusion.t_sampler), sharded over ``run.mesh``. ``batch_size``:
    rows per network call (default: config.sample.batch_size)."""
    from diffjax.inference.loading import pick_params

    if not run.num_classes:
        raise ValueError("the diffusion classifier needs a class-conditional run; this run is "
                         "unconditional (num_classes = 0)")
    if run.vae is not None:
        raise ValueError("the diffusion classifier works on the run's examples, and this is a "
                         "latent run: encode the images with its VAE first")
    images = np.asarray(images, np.float32)
    if images.ndim != len(run.example_shape) + 1 or \
            tuple(images.shape[1:]) != tuple(run.example_shape):
        raise ValueError(f"images have shape {images.shape}; this run's examples are "
                         f"{tuple(run.example_shape)}: pass (N, {', '.join(map(str, run.example_shape))})")
    classes = np.arange(run.num_classes) if classes is None else np.asarray(classes, np.int32)
    bad = [int(c) for c in np.ravel(classes) if not 0 <= c < run.num_classes]
    if bad:
        raise ValueError(f"classes {bad} out of range: this run has classes 0 .. "
                         f"{run.num_classes - 1}")
    s = get_schedule(schedule)
    d = run.config.diffusion
    grid = time_grid(run.process, max(s.n_samples), d.get("t_sampler", "uniform"),
                     p_mean=d.get("p_mean", -1.2), p_std=d.get("p_std", 1.2))
    params = pick_params(run.params, params_name or run.config.sample.params)
    batch_size = int(batch_size or run.config.sample.get("batch_size", 100))
    return diffusion_classify(run.den, params, run.process, images, key=key, schedule=s,
                              classes=classes, t_grid=grid, batch_size=batch_size, mesh=run.mesh,
                              first_index=first_index)


def accuracy(pred, labels) -> float:
    pred, labels = np.asarray(pred), np.asarray(labels)
    return float(np.mean(pred == labels)) if len(labels) else math.nan


__all__ = ["LOSSES", "SCHEDULES", "Schedule", "ClassifyResult", "get_schedule", "round_indices",
           "survivors_per_round", "nfe", "time_grid", "eps_error", "pair_loss",
           "diffusion_classify", "classify", "accuracy"]
