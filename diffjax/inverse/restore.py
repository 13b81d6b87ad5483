"""Restore images with a trained run as the prior: measure y = A(x) (+ noise), guide the run's
denoiser by y (steering.py) and run the compiled sampler, batch by batch.

    from diffjax import inference
    from diffjax.inverse import restore
    run = inference.load(workdir)
    out = restore.restore(run, images, "sr", method="steer", steps=18, operator_options={"factor": 2})
    out.x, out.y                        # restorations (N, H, W, C) in [-1, 1], measurements

A class-conditional run is drawn unconditionally (its null label, ``run.num_classes``) unless
``labels`` are given. The draw is the one sampling program (``inference.generate``) with the
guidance method 'steer' / 'dps' of the registry (guidance/measurement.py), the operator as its
prepared static part and the measurements as the program's per-example ``cond``: one program per
(run, sampler, steps, spacing, batch, operator, method); the params, the seed, the measurements and
the strength are its arguments (a new strength never recompiles); over the run's mesh. Example i
uses the key fold_in(key(seed), i), so a restoration does not depend on the batch size.
``method='none'`` is the no-prior baseline ``operators.baseline`` (project(0, y)).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.inverse import operators as ops
from diffjax.inverse import steering

METHODS = tuple(steering.METHODS) + ("none",)


class Restoration(NamedTuple):
    x: np.ndarray            # restorations (N, H, W, C)
    y: np.ndarray            # the measurements used (N, *measurement_shape)
    operator: Any            # the Operator
    method: str
    strength: float


def measure(op: ops.Operator, images, noise_std: float = 0.0, seed: int = 0) -> np.ndarray:
    """y = A(x) + noise_std * N(0, I) (the noise from ``seed``; only on ``op.observed`` entries)."""
    y = np.asarray(jax.jit(op.forward)(jnp.asarray(images, jnp.float32)))
    if noise_std:
        n = noise_std * np.random.default_rng(seed).standard_normal(y.shape).astype(np.float32)
        y = y + (n if op.observed is None else n * np.asarray(op.observed, np.float32))
    return y.astype(np.float32)


def restore(run, images=None, operator="inpaint", *, measurements=None, method: str = "steer",
            strength: float | None = None, steps: int = 18, sampler: str = "heun",
            spacing: str = "karras", seed: int = 0, noise_std: float = 0.0, labels=None,
            batch_size: int = 100, params_name: str | None = None, operator_options=None,
            knobs: dict | None = None, clip: bool = True) -> Restoration:
    """Restorations of ``images`` (N, H, W, C) in [-1, 1] from y = A(images) (+ ``noise_std``
    noise), or from given ``measurements``. ``operator``: an Operator or a name in
    ``operators.OPERATORS`` (built for the run's example shape with ``operator_options``).
    ``strength``: the method's (steering.METHODS default if None). ``knobs``: the sampler's."""
    shape = tuple(run.example_shape)
    op = operator if isinstance(operator, ops.Operator) else \
        ops.make(operator, shape, **(operator_options or {}))
    if method not in METHODS:
        raise ValueError(f"unknown restoration method {method!r}; valid: {', '.join(METHODS)}")
    if images is None and measurements is None:
        raise ValueError("restore: pass images (to measure) or measurements")
    if images is not None:
        images = np.asarray(images, np.float32)
        if images.ndim != 4 or tuple(images.shape[1:]) != shape:
            raise ValueError(f"restore: images have shape {images.shape}; this run's images are "
                             f"{shape} (N, {', '.join(map(str, shape))})")
    y = measure(op, images, noise_std, seed) if measurements is None else \
        np.asarray(measurements, np.float32)
    op.check((y.shape[0],) + shape, y.shape)
    if strength is None:
        strength = steering.METHODS[method][1] if method != "none" else 0.0
    if method == "none":
        x = np.asarray(jax.jit(lambda v: ops.baseline(op, v, v.shape[:1] + shape))(y))
        return Restoration(np.clip(x, -1, 1) if clip else x, y, op, method, float(strength))
    from diffjax import guidance, inference
    section = guidance.resolve({"name": "steer" if method == "steer_grad" else method,
                                "scale": float(strength), "operator": op.name,
                                **({"form": "grad"} if method == "steer_grad" else {})})
    null = run.num_classes if run.num_classes else None
    lab = np.full((y.shape[0],), null or 0, np.int32) if labels is None else \
        np.asarray(labels, np.int32)
    x = inference.generate(run, y.shape[0], sampler=sampler, steps=int(steps), guidance=section,
                           seed=seed, labels=lab, batch_size=max(1, min(int(batch_size),
                                                                        y.shape[0])),
                           params_name=params_name, spacing=spacing, clip=clip, knobs=knobs,
                           cond={steering.KEY: y}, prepared=(op, None))
    return Restoration(x, y, op, method, float(strength))
