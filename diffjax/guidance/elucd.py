"""EluCD (Ma, Hu, Wang & Sun, ICLR 2024, "Elucidating the design space of classifier-guided
diffusion generation"): classifier guidance from an off-the-shelf classifier trained on clean data
only (``configs/digits_clean_classifier.py``), made usable by calibration:

1. a calibrated log-likelihood with a joint and a marginal temperature,
       log p~(y | x) = tau1 f_y(x) - log sum_j exp(tau2 f_j(x))
   (tau1 = tau2 = 1: log-softmax; tau2 = 0: the logit f_y up to the constant log C);
2. smoothing: every ReLU of the classifier replaced by Softplus_beta (``smooth_beta``; 0 keeps the
   classifier's own activation; a classifier with a smooth activation such as SiLU must use 0);
3. a schedule over the noise level with a sine bump, u = position of log sigma between
   log sigma_min (u = 0) and log sigma_max (u = 1), clipped to [0, 1].

Two paths, as in the official code (AlexMaOLS/EluCD), both written as denoiser transforms D -> D in
the EDM frame, where adding a score term g to the score (D - x) / sigma^2 is D + sigma^2 g:

``path='x0'`` (their DDPM path): the classifier reads the denoised estimate x0 = D(x) (clipped to
[-1, 1]); its gradient g0 = grad_x0 log p~(y | x0) is taken with respect to x0 and added to the
DDPM posterior mean as if it were the gradient in x_t, without the chain rule back to x_t (their
``mean + (Sigma_t + add_t) g0``). Carried to the EDM frame (x = x_t / sqrt(abar), sigma^2 =
(1 - abar) / abar, so that mean shift is a change sqrt(abar) sigma^2 g0 of D), with the sine bump
as a relative boost:
    D' = D + s (1 + gamma sin(pi u)) sigma^2 / sqrt(1 + sigma^2) g0
(their bump add_t = gamma Sigma_max sin(pi t / T) is added to the posterior variance Sigma_t;
1 + gamma sin(pi u) is our approximation of (Sigma_t + add_t) / Sigma_t on the noise level).
Treating g0 as a score in x (sigma^2 g0) would be ~sigma times stronger at high noise: measured,
it wrecks the samples at any scale that helps late.

``path='noisy'`` (their EDM path): the classifier reads the noisy x scaled to unit RMS when its RMS
exceeds 1; the gradient is normalised to the RMS of x and scaled by the step schedule
    s(u) = s (max(u, 0.0025) + gamma sin(pi u))     (their s_i over the step index i ~ 1 - u)
    D' = D + s(u) rms(x) g / rms(g),   g = grad_x log p~(y | x / max(rms(x), 1))
Their code adds this to x before each Euler step; as a change of D it is the same direction, with a
step-size factor sigma_next / (sigma - sigma_next) (about 1-4 on a 10-step Karras grid) folded into
s. Their Heun correction is unguided; here every evaluation of D is guided.

The card's defaults: DDPM path s = 1, beta = 3, tau1 = 1, tau2 = 0.5, gamma = 0.3 (the fields'
defaults, scale 0 = none); EDM path beta = 5, tau2 = 0, s = 0.004, gamma = 0.3.
Registered as ``elucd``:

    diffjax sample --workdir RUN --guidance elucd --guidance.classifier_workdir CLEAN \\
        --guidance.scale 1
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from diffjax.guidance import other_runs
from diffjax.guidance.cfg_variants import _per_example, schedule_weight
from diffjax.guidance.registry import Method, register

PATHS = ("x0", "noisy")


def calibrated_logp(logits, y, tau1, tau2):
    """tau1 f_y - logsumexp(tau2 f) per example (B,) from logits (B, C) and labels (B,)."""
    logits = logits.astype(jnp.float32)
    f_y = jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
    return tau1 * f_y - jax.nn.logsumexp(tau2 * logits, axis=-1)


def rms(v):
    """Per-example root mean square, shaped to broadcast against v."""
    axes = tuple(range(1, v.ndim))
    return jnp.sqrt(jnp.mean(jnp.square(v), axis=axes, keepdims=True))


def clean_logits(model, num_classes: int):
    """``logits(params, x, beta) -> (B, C)`` of a clean-image classifier run's model; beta > 0
    smooths its ReLUs (Softplus_beta), beta = 0 keeps them; the shape is checked."""
    relu = getattr(model, "activation", "silu") == "relu"

    def logits(params, x, beta):
        if relu:      # one forward: the smooth or the plain network (beta is traced)
            b = jnp.asarray(beta, jnp.float32)
            out = jax.lax.cond(
                b > 0, lambda z: model.apply({"params": params}, z, smooth=jnp.maximum(b, 1e-3)),
                lambda z: model.apply({"params": params}, z), x)
        else:
            out = model.apply({"params": params}, x)
        if out.shape != (x.shape[0], num_classes):
            raise ValueError(f"guidance classifier: the classifier returned logits of shape "
                             f"{out.shape} for a batch of {x.shape[0]}; expected "
                             f"({x.shape[0]}, {num_classes}), one logit per class")
        return out

    return logits


def elucd(D, logits, params, *, scale, smooth_beta, tau1, tau2, gamma, sigma_min, sigma_max,
          path, label_key="label"):
    """The EluCD-guided denoiser of the module docstring (``logits(params, x, beta) -> (B, C)``)."""
    if path not in PATHS:
        raise ValueError(f"guidance elucd: path must be one of {', '.join(PATHS)}, got {path!r}")

    def logp(z, y):
        return jnp.sum(calibrated_logp(logits(params, z, smooth_beta), y, tau1, tau2))

    def guided(x, sigma, cond):
        d = D(x, sigma, cond)
        y = cond[label_key]
        s = _per_example(sigma, x)
        u = schedule_weight(s, "linear", sigma_min, sigma_max).astype(jnp.float32)
        bump = jnp.sin(jnp.pi * u)
        if path == "x0":
            x0 = jnp.clip(jax.lax.stop_gradient(d), -1.0, 1.0).astype(jnp.float32)
            g = jax.grad(logp)(x0, y)
            return d + (scale * (1.0 + gamma * bump) * s ** 2 / jnp.sqrt(1.0 + s ** 2)
                        * g).astype(d.dtype)
        xs = x.astype(jnp.float32)
        g = jax.grad(lambda z: logp(z / jnp.maximum(rms(z), 1.0), y))(xs)
        weight = scale * (jnp.maximum(u, 0.0025) + gamma * bump)   # their floor 1e-5 at s 0.004
        step = weight * rms(xs) * g / jnp.maximum(rms(g), 1e-20)
        return d + step.astype(d.dtype)

    return guided


def load_clean_classifier(method: str, section, run):
    """(logits fn, params) of the clean classifier run in ``section['classifier_workdir']``."""
    clf, name = other_runs.load(method, "classifier_workdir", section["classifier_workdir"],
                                section["classifier_params"], section["classifier_step"], run,
                                what="an off-the-shelf classifier trained on clean data",
                                config_file="configs/digits_clean_classifier.py")
    workdir = section["classifier_workdir"]
    if getattr(clf.model, "takes_noise_level", True):
        raise ValueError(f"guidance {method}: the run in {workdir!r} is a "
                         f"{type(clf.model).__name__}, which takes a noise level; {method} guides "
                         f"with a clean-image classifier (config.model.name 'classifier', e.g. "
                         f"configs/digits_clean_classifier.py); for a noise-conditioned one use "
                         f"guidance 'classifier'")
    other_runs.check_compatible(method, workdir, clf, run, "the classifier")
    return _logits(clf.model, int(clf.config.model.num_classes)), clf.params[name]


@functools.lru_cache(maxsize=8)
def _logits(model, num_classes: int):
    return clean_logits(model, num_classes)


def check(f, sigmas):
    if not 0 < f["sigma_min"] < f["sigma_max"]:
        raise ValueError(f"guidance elucd: need 0 < sigma_min < sigma_max, got "
                         f"{f['sigma_min']:g} and {f['sigma_max']:g}")
    if f["path"] not in PATHS:
        raise ValueError(f"guidance elucd: path must be one of {', '.join(PATHS)}, got "
                         f"{f['path']!r}")
    if f["smooth_beta"] < 0:
        raise ValueError(f"guidance elucd: smooth_beta must be >= 0 (0 = the classifier's own "
                         f"activation), got {f['smooth_beta']:g}")


CLASSIFIER_FIELDS = (("classifier_workdir", ""), ("classifier_params", ""),
                     ("classifier_step", -1))

register(Method(
    name="elucd", needs_classes=True, check=check,
    prepare=lambda section, run: load_clean_classifier("elucd", section, run),
    make=lambda D, ctx, logits, params, **f: elucd(
        D, logits, params, label_key=ctx.label_key,
        **{k: v for k, v in f.items() if k not in dict(CLASSIFIER_FIELDS)}),
    identity=lambda f: f["scale"] == 0.0,
    fields=(("scale", 0.0), ("smooth_beta", 3.0), ("tau1", 1.0), ("tau2", 0.5), ("gamma", 0.3),
            ("sigma_min", 0.002), ("sigma_max", 80.0), ("path", "x0")) + CLASSIFIER_FIELDS,
    help="EluCD (Ma et al. 2024): guidance from an off-the-shelf classifier trained on clean "
         "data (--guidance.classifier_workdir DIR, configs/digits_clean_classifier.py), fed the "
         "denoised estimate (path x0) or the normalised noisy x (path noisy), Softplus-smoothed, "
         "temperature-calibrated, sine-scheduled; scale s: 0 = none"))
