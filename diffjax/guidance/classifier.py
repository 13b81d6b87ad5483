"""Classifier guidance (Dhariwal & Nichol 2021, "Diffusion models beat GANs", Eq. 10 / Alg. 1) with a
noise-conditioned classifier p(y | x, sigma): in the EDM frame the score is (D(x) - x) / sigma^2, so
adding s grad_x log p(y | x, sigma) to it is

    D_s(x, sigma, y) = D(x, sigma, y) + s sigma^2 grad_x log p(y | x, sigma)

(s = 0: the model itself; s = 1 with the exact noisy likelihood samples the exact posterior p(x0 | y),
tests/guidance/test_classifier_guidance.py). The gradient is ``jax.grad`` inside the compiled loop.

The classifier network sees EDM-preconditioned inputs (``classifier_inputs``): x / sqrt(sigma^2 +
sigma_data^2) and the noise label log(sigma) / 4, the same at training (the ``noisy_classifier``
objective, training/classifier_objective.py; ``configs/digits_noisy_classifier.py``) and at guidance.
Registered as ``classifier``:

    diffjax sample --workdir RUN --guidance classifier --guidance.classifier_workdir CLF \\
        --guidance.scale 2
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from diffjax.guidance import other_runs
from diffjax.guidance.registry import Method, register


def classifier_inputs(x, sigma, sigma_data: float = 0.5):
    """(network input, noise label) of a noise-conditioned classifier at (x, sigma), EDM frame."""
    s = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), (x.shape[0],))
    c_in = 1.0 / jnp.sqrt(s ** 2 + sigma_data ** 2)
    return x * c_in.reshape((-1,) + (1,) * (x.ndim - 1)), jnp.log(jnp.maximum(s, 1e-20)) / 4.0


def network_logp(apply_fn, num_classes: int, sigma_data: float = 0.5, label_key: str = "label"):
    """log p(y | x, sigma) of a classifier ``apply_fn(params, x_in, noise_label) -> logits (B, C)``:
    ``logp(params, x, sigma, cond) -> (B,)``."""

    def logp(params, x, sigma, cond):
        logits = apply_fn(params, *classifier_inputs(x, sigma, sigma_data))
        if logits.shape != (x.shape[0], num_classes):
            raise ValueError(f"guidance classifier: the classifier returned logits of shape "
                             f"{logits.shape} for a batch of {x.shape[0]}; expected "
                             f"({x.shape[0]}, {num_classes}), one logit per class")
        y = cond[label_key]
        return jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32)), y[:, None],
                                   axis=1)[:, 0]

    return logp


def classifier_guidance(D, logp, params, scale):
    """D_s of the module docstring; ``logp(params, x, sigma, cond) -> (B,)``."""

    def guided(x, sigma, cond):
        d = D(x, sigma, cond)
        g = jax.grad(lambda z: jnp.sum(logp(params, z, sigma, cond)))(x)
        s = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), (x.shape[0],))
        return d + jnp.asarray(scale, d.dtype) * (s ** 2).reshape((-1,) + (1,) * (x.ndim - 1)) * g

    return guided


def prepare(section, run):
    clf, name = other_runs.load("classifier", "classifier_workdir", section["classifier_workdir"],
                                section["classifier_params"], section["classifier_step"], run,
                                what="the noisy classifier's run",
                                config_file="configs/digits_noisy_classifier.py")
    workdir = section["classifier_workdir"]
    if clf.config.get("objective", {}).get("name") != "noisy_classifier":
        raise ValueError(f"guidance classifier: the run in {workdir!r} was not trained with "
                         f"objective 'noisy_classifier' (config.objective.name); train one with "
                         f"configs/digits_noisy_classifier.py")
    other_runs.check_compatible("classifier", workdir, clf, run, "the classifier")
    logp = _logp(clf.model, int(clf.config.model.num_classes),
                 float(clf.config.diffusion.sigma_data))
    return logp, clf.params[name]


@functools.lru_cache(maxsize=8)
def _logp(model, num_classes: int, sigma_data: float):
    """One function per classifier (its identity selects the compiled program)."""
    apply_fn = lambda p, x, t: model.apply({"params": p}, x, t)
    return network_logp(apply_fn, num_classes, sigma_data)


register(Method(
    name="classifier", needs_classes=True, prepare=prepare,
    make=lambda D, ctx, logp, params, scale, **_: classifier_guidance(D, logp, params, scale),
    identity=lambda f: f["scale"] == 0.0,
    fields=(("scale", 0.0), ("classifier_workdir", ""), ("classifier_params", ""),
            ("classifier_step", -1)),
    help="classifier guidance (Dhariwal & Nichol 2021): D + s sigma^2 grad log p(y | x, sigma) "
         "from a noise-conditioned classifier run (--guidance.classifier_workdir DIR, trained "
         "with configs/digits_noisy_classifier.py); scale s: 0 = none"))
