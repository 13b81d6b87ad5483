"""T-Stitch (Pan et al., ICLR 2024, "T-Stitch: Accelerating Sampling in Pre-trained Diffusion Models
with Trajectory Stitching"): run the first fraction r of the sampling steps with a small, cheap
denoiser D_S and the rest with the large one D_L (the run being sampled). Training-free: small
models get the global structure right at high noise, the large one refines the detail.

On the program's grid sigma_0 > ... > sigma_N = 0, with k = ceil(r N) clipped to [0, N]:

    D(x, sigma, c) = D_S^w(x, sigma, c)   if sigma > sigma_k   (r = 1: at every noise level)
                     D_L^w(x, sigma, c)   otherwise            (r = 0: at every noise level)

where D^w is classifier-free guidance with scale w done inside whichever model is active (each
model evaluates its own conditional / null pair; w = 1: none; unconditional runs: ignored). The
official code switches on the step's timestep (DiT: small iff t/T >= 1 - r) or step index (Stable
Diffusion: small iff (i + 1)/K <= r); here the switch is a noise level of the grid, so it holds for
every evaluation a sampler makes. A product r N within 1e-4 of an integer counts as that integer
(float32 makes 0.3 * 10 = 3.0000001, whose ceiling would otherwise be 4).

- One evaluation per step (ddim, ddpm, dpmpp_2m, euler without churn): the small model does
  exactly the first k steps.
- Heun: step i evaluates at sigma_i (predictor) and sigma_{i+1} (corrector), so the step into
  sigma_k uses the small model's predictor and the large model's corrector: 2k - 1 small
  evaluations and 2 (N - k) large ones for 1 <= k <= N (k = 0: 2N - 1 large ones). With churn,
  s_hat = sigma_k (1 + gamma) > sigma_k, so for 0 < k < N step k's predictor is the small
  model's too (r = 0 and r = 1 stay exactly one model).
- Compute is really skipped: for a scalar sigma (what every sampler passes) ``jax.lax.cond``
  runs one network per evaluation; for a per-example sigma (B,) both run and each row takes its
  model's answer (a vmapped caller turns the cond into the same select).

Registered as ``tstitch``; ``fraction`` and ``scale`` are traced (a new value never recompiles;
r = 0 at w = 1 is the large model itself, which the registry skips without loading the small run):

    diffjax sample --workdir LARGE --guidance tstitch --guidance.small_workdir SMALL \\
        --guidance.fraction 0.4 --guidance.scale 3

``small_workdir`` is a diffjax training run of the same task (example shape, classes, process and
parameterization; e.g. configs/digits_weak.py trained to the end); ``small_params`` picks its
parameter set (default: its config.sample.params). It is loaded once per draw (``prepare``) and its
params are an argument of the compiled program.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.core import denoisers
from diffjax.guidance import other_runs
from diffjax.guidance.classifier_free import classifier_free
from diffjax.guidance.registry import Method, register

METHOD = "tstitch"


def check_same_task(workdir: str, small, run) -> None:
    """The small run must be a denoiser of the large run's task: the same example shape and classes
    (``other_runs.check_compatible``), process and parameterization."""
    other_runs.check_compatible(METHOD, workdir, small, run, "the small run")
    for key in ("process", "parameterization"):
        a, b = small.config.diffusion.get(key), run.config.diffusion.get(key)
        if a != b:
            raise ValueError(f"guidance {METHOD}: the small run in {workdir!r} has "
                             f"diffusion.{key} {a!r}, this run {b!r}: both models must share it")


def prepare(section, run):
    """(the small run's denoiser, its params), checked against the large ``run``."""
    small, name = other_runs.load(METHOD, "small_workdir", section["small_workdir"],
                                  section["small_params"], -1, run,
                                  what="the small model's run",
                                  config_file="configs/digits_weak.py")
    check_same_task(section["small_workdir"], small, run)
    return small.den, small.params[name]


def switch_point(sigmas, fraction):
    """(k, sigma_k) for the traced ``fraction`` on the grid ``sigmas`` (N + 1 levels):
    k = ceil(fraction N) clipped to [0, N]."""
    n = sigmas.shape[0] - 1
    k = jnp.clip(jnp.ceil(jnp.asarray(fraction, jnp.float32) * n - 1e-4), 0, n).astype(jnp.int32)
    return k, sigmas[k]


def uses_small(sigma, sigmas, fraction):
    """Whether the evaluation at ``sigma`` (a scalar or (B,)) is the small model's:
    sigma > sigma_k, and always for k = N, never for k = 0."""
    n = sigmas.shape[0] - 1
    k, sigma_k = switch_point(sigmas, fraction)
    sigma = jnp.asarray(sigma)   # compared in its own dtype, the grid cast to it as samplers do
    return (k >= n) | ((k > 0) & (sigma > sigma_k.astype(sigma.dtype)))


def tstitch(D, ctx, small_den, small_state, fraction, scale, **_):
    """The stitched denoiser: the small model (``small_den`` bound to ``small_state``) above the
    switch point, ``D`` below it, each with classifier-free guidance of scale ``scale``."""
    if ctx.sigmas is None:
        raise ValueError(f"guidance {METHOD} needs the sampling grid to place its switch point "
                         f"(guidance.Context(sigmas=...)); inference.build passes it, and "
                         f"inference.denoiser(run, guidance, sigmas=grid) when given one")
    sigmas = jnp.asarray(ctx.sigmas)
    Ds = denoisers.bind(small_den, small_state)
    if ctx.null_label is not None:
        Ds = classifier_free(Ds, ctx.null_label, scale, ctx.label_key)
        D = classifier_free(D, ctx.null_label, scale, ctx.label_key)

    def stitched(x, sigma, cond):
        sigma = jnp.asarray(sigma)
        small = uses_small(sigma, sigmas, fraction)
        out = jax.eval_shape(D, x, sigma, cond)
        large_fn = lambda x, s, c: D(x, s, c)
        small_fn = lambda x, s, c: Ds(x, s, c).astype(out.dtype)
        if sigma.ndim == 0:
            return jax.lax.cond(small, small_fn, large_fn, x, sigma, cond)
        mask = jnp.reshape(small, small.shape + (1,) * (x.ndim - small.ndim))
        return jnp.where(mask, small_fn(x, sigma, cond), large_fn(x, sigma, cond))

    return stitched


def check(fields, sigmas) -> None:
    if not 0.0 <= fields["fraction"] <= 1.0:
        raise ValueError(f"guidance {METHOD}: fraction {fields['fraction']:g} must be in [0, 1] "
                         f"(the share of the sampling steps the small model does)")


register(Method(name=METHOD, make=tstitch, prepare=prepare, check=check, needs_classes=False,
                identity=lambda f: f["fraction"] == 0.0 and f["scale"] == 1.0,
                fields=(("fraction", 0.4), ("scale", 1.0), ("small_workdir", ""),
                        ("small_params", "")),
                help="T-Stitch (Pan et al. 2024): the first fraction of the sampling steps with a "
                     "small run of the same task (--guidance.small_workdir DIR), the rest with "
                     "this one; scale: classifier-free guidance inside the active model"))
