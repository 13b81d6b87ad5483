"""Measurement-guided denoisers as guidance methods: steered diffusion (Nair et al. 2023) and DPS
(Chung et al. 2023), the transforms of ``diffjax/inverse/steering.py`` (equations there), with the
measurement y in ``cond['measurement']`` (the sampling program's per-example ``cond``).

    steer   D' = D + w (project(D, y) - D)   (operators with a projection; w = 1: the paper's), else
            D' = D - w sigma grad_x ||y - A(D)||^2    (``scale`` = w; ``form`` 'grad' forces
                                                      the gradient form, 'auto' picks)
    dps     D' = D - zeta sigma^2 grad_x ||y - A(D)||  (or ||.||^2: ``normalize`` false)  (zeta)

The operator is ``operator`` (a name in inverse.operators.OPERATORS) with ``options`` ("factor=4",
"mask=random,keep=0.3"), built for the run's example shape when the draw is prepared; Python code
may pass any ``inverse.operators.Operator`` as the prepared static part instead
(``guidance.split(section, op)``, what ``inverse.restore`` does). Scale 0 is the model. Draw with
``diffjax restore`` (or ``inverse.restore``): ``diffjax sample`` has no measurement to give.
"""
from __future__ import annotations

import functools

from diffjax.guidance.registry import Method, register


def parse_options(text: str) -> dict:
    """'factor=4,mask=box' -> {'factor': 4, 'mask': 'box'} (ints, floats, true/false, strings)."""
    out = {}
    for item in filter(None, (t.strip() for t in (text or "").split(","))):
        if "=" not in item:
            raise ValueError(f"guidance operator options: expected name=value, got {item!r} in "
                             f"{text!r}")
        k, v = (t.strip() for t in item.split("=", 1))
        for cast in (int, float):
            try:
                v = cast(v)
                break
            except ValueError:
                pass
        else:
            v = {"true": True, "false": False}.get(v.lower(), v)
        out[k] = v
    return out


@functools.lru_cache(maxsize=32)
def operator(name: str, example_shape: tuple, options: str):
    """One Operator per (name, shape, options): the same object keys the same compiled program."""
    from diffjax.inverse import operators
    return operators.make(name, example_shape, **parse_options(options))


def prepare(section, run):
    return operator(section["operator"], tuple(run.example_shape), section["options"]), None


def _make(kind):
    def make(D, ctx, op, state, *, scale, **f):
        from diffjax.inverse import steering
        if kind == "steer":
            if f["form"] not in ("auto", "grad"):
                raise ValueError(f"guidance steer: form must be 'auto' or 'grad', got "
                                 f"{f['form']!r}")
            fn = steering.steer_grad if f["form"] == "grad" else steering.steer
            return fn(D, op, scale)
        return steering.dps(D, op, scale, normalize=f["normalize"])
    return make


_zero = lambda f: f["scale"] == 0.0
_ops = (("operator", "inpaint"), ("options", ""))
register(Method(
    name="steer", make=_make("steer"), prepare=prepare, identity=_zero,
    fields=(("scale", 1.0),) + _ops + (("form", "auto"),), needs_cond=("measurement",),
    help="steered diffusion (Nair et al. 2023) for inverse problems: the clean estimate projected "
         "onto the measurement (cond['measurement']); --guidance.operator inpaint|sr|colorize|"
         "deblur, --guidance.options 'factor=4'; used by diffjax restore"))
register(Method(
    name="dps", make=_make("dps"), prepare=prepare, identity=_zero,
    fields=(("scale", 20.0),) + _ops + (("normalize", True),), needs_cond=("measurement",),
    help="diffusion posterior sampling (Chung et al. 2023) in the denoiser frame: D - zeta "
         "sigma^2 grad ||y - A(D)||, y = cond['measurement']; used by diffjax restore"))
