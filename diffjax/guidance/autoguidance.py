"""Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself"):
guide the model D1 with a weaker version D0 of itself - the same task and conditioning, less
capacity and/or less training (a smaller network, an earlier checkpoint):

    D_w(x, sigma, c) = D0(x, sigma, c) + w (D1(x, sigma, c) - D0(x, sigma, c))

(the official ``ref_Dx.lerp(Dx, guidance)``). w = 1 is D1; classifier-free guidance is the special
case D0 = the unconditional model. Works for unconditional models too. Registered as ``auto``:

    diffjax sample --workdir MAIN --guidance auto --guidance.weak_workdir WEAK --guidance.scale 2

``weak_workdir`` is a diffjax training run on the same data (``configs/digits_weak.py`` trains one
for the Quickstart); ``weak_params`` picks its parameter set (default: its config.sample.params),
``weak_step`` its checkpoint (-1: the latest). The weak run is loaded once per draw (``prepare``) and
its params are an argument of the compiled program, so a new scale never recompiles.
"""
from __future__ import annotations

import jax.numpy as jnp

from diffjax.core import denoisers
from diffjax.guidance import other_runs
from diffjax.guidance.registry import Method, register


def prepare(section, run, method: str = "auto"):
    """(the weak run's denoiser, its params) for the section's weak_* fields (``method`` names
    the guidance asking, for the errors)."""
    weak, name = other_runs.load(method, "weak_workdir", section["weak_workdir"],
                                 section["weak_params"], section["weak_step"], run,
                                 what="the weak model's run", config_file="configs/digits_weak.py")
    other_runs.check_compatible(method, section["weak_workdir"], weak, run, "the weak run")
    return weak.den, weak.params[name]


def autoguidance(D, ctx, weak_den, weak_state, scale, **_):
    D0 = denoisers.bind(weak_den, weak_state)

    def guided(x, sigma, cond):
        d1, d0 = D(x, sigma, cond), D0(x, sigma, cond)
        return d0 + jnp.asarray(scale, d1.dtype) * (d1 - d0)

    return guided


register(Method(name="auto", make=autoguidance, prepare=prepare, needs_classes=False,
                identity=lambda f: f["scale"] == 1.0,
                fields=(("scale", 1.0), ("weak_workdir", ""), ("weak_params", ""),
                        ("weak_step", -1)),
                help="autoguidance (Karras et al. 2024): D0 + w (D1 - D0) with D0 a weaker run of "
                     "the same model (--guidance.weak_workdir DIR: smaller or less trained, same "
                     "data)"))
