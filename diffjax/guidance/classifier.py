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
import os

import jax
import jax.numpy as jnp

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


@functools.lru_cache(maxsize=4)
def _load(workdir: str, params: str, step: int, mesh):
    from diffjax import inference

    config = inference.load_config(workdir)
    name = params or config.sample.params
    run = inference.load(workdir, step=None if step < 0 else step, config=config, params=name,
                         mesh=mesh)
    model = run.model
    apply_fn = lambda p, x, t: model.apply({"params": p}, x, t)
    return network_logp(apply_fn, int(config.model.num_classes),
                        float(config.diffusion.sigma_data)), run, name


def prepare(section, run):
    workdir = section["classifier_workdir"]
    if not workdir:
        raise ValueError("guidance classifier needs the noisy classifier's run: "
                         "--guidance.classifier_workdir DIR (config.sample.guidance."
                         "classifier_workdir), e.g. one trained with "
                         "configs/digits_noisy_classifier.py")
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"guidance classifier: classifier_workdir {workdir!r} is not a diffjax "
                         f"training workdir (no config.json); train the classifier there first, "
                         f"e.g. diffjax train --config configs/digits_noisy_classifier.py "
                         f"--workdir {workdir}")
    from diffjax import inference
    cfg = inference.load_config(workdir)
    if cfg.get("objective", {}).get("name") != "noisy_classifier":
        raise ValueError(f"guidance classifier: the run in {workdir!r} was not trained with "
                         f"objective 'noisy_classifier' (config.objective.name); train one with "
                         f"configs/digits_noisy_classifier.py")
    if int(cfg.model.num_classes) != run.num_classes:
        raise ValueError(f"guidance classifier: the classifier in {workdir!r} has "
                         f"{cfg.model.num_classes} classes, this run {run.num_classes}")
    logp, clf, name = _load(os.path.abspath(workdir), section["classifier_params"],
                            int(section["classifier_step"]), run.mesh)
    if tuple(clf.example_shape) != tuple(run.example_shape):
        raise ValueError(f"guidance classifier: the classifier in {workdir!r} takes examples of "
                         f"shape {tuple(clf.example_shape)}, this run draws "
                         f"{tuple(run.example_shape)}")
    return logp, clf.params[name]


register(Method(
    name="classifier", needs_classes=True, prepare=prepare,
    make=lambda D, ctx, logp, params, scale, **_: classifier_guidance(D, logp, params, scale),
    identity=lambda f: f["scale"] == 0.0,
    fields=(("scale", 0.0), ("classifier_workdir", ""), ("classifier_params", ""),
            ("classifier_step", -1)),
    help="classifier guidance (Dhariwal & Nichol 2021): D + s sigma^2 grad log p(y | x, sigma) "
         "from a noise-conditioned classifier run (--guidance.classifier_workdir DIR, trained "
         "with configs/digits_noisy_classifier.py); scale s: 0 = none"))
