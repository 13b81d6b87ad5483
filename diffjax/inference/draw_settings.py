"""The settings of a draw (``diffjax sample`` / ``evaluate``, ``generate``): each value given, else
the run config's ``config.sample`` / ``config.eval`` default; every value checked, with errors that
name where it came from (the command-line flag or config key).

    st = settings(run, 'sample', steps=10, guidance={'scale': 3.0})
    # {'num': 100, 'sampler': 'heun', 'steps': 10, 'spacing': 'karras',
    #  'guidance': {'name': 'classifier_free', 'scale': 3.0}, 'params': 'power_0.1', 'seed': 0,
    #  'checkpoint_step': 1000}

Refused: a non-positive count, an unknown sampler / spacing / parameter set / guidance method or
field, 'pfgmpp' on a run that is not PFGM++, a guidance that needs classes on an unconditional model.
A guidance given as a partial section (e.g. only a scale) keeps the rest of the run's default.
"""
from __future__ import annotations

import numpy as np

from diffjax import guidance as guidance_lib
from diffjax.core import samplers, timesteps
from diffjax.inference.loading import Run, param_names

# The defaults of a draw: setting -> key of config.sample / config.eval (evaluation's spacing and
# parameter set are the sample section's); seeds are not in the config.
DEFAULTS = {
    "sample": {"num": "sample.num", "sampler": "sample.sampler", "steps": "sample.steps",
               "spacing": "sample.spacing", "guidance": "sample.guidance",
               "params": "sample.params"},
    "eval": {"num": "eval.num_samples", "sampler": "eval.sampler", "steps": "eval.steps",
             "spacing": "sample.spacing", "guidance": "eval.guidance", "params": "sample.params"},
}
DEFAULT_SEED = {"sample": 0, "eval": 1234}


def _lookup(config, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def pfgmpp_error(process_name: str) -> str:
    """Why sampler 'pfgmpp' cannot sample a run whose process is ``process_name``."""
    return (f"sampler 'pfgmpp' draws from the PFGM++ prior and needs a PFGM++ run, but this run's "
            f"process is {process_name!r} (config.diffusion.process). Train one with "
            f"--config.diffusion.process=pfgmpp (augmentation dimension D: "
            f"--config.diffusion.process_kwargs=\"{{'D': 128}}\", 128 by default); on this run "
            f"use heun, the same solver with the Gaussian prior")


def check_setting(name: str, value, origin: str | None = None, run: Run | None = None,
                  config=None):
    """Refuse a value of a draw setting that cannot work (ValueError naming ``origin``). With
    ``run`` (or just its training ``config``, before loading it), also what depends on the run: the
    parameter sets, PFGM++."""
    origin = origin or name
    if run is not None:
        config = run.config
    if name in ("num", "steps"):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{origin} must be a positive integer, got {value!r}")
    elif name == "sampler":
        if value not in samplers.SAMPLERS:
            raise ValueError(f"{origin}: unknown sampler {value!r}; expected one of "
                             f"{', '.join(sorted(samplers.SAMPLERS))}")
        needs = samplers.get(value).requires_process     # PFGM++: its own prior
        if needs is not None and config is not None:
            from diffjax.training import step as step_lib
            process = run.process if run is not None else step_lib.make_process(config.diffusion)
            if not isinstance(process, needs):
                raise ValueError(f"{origin}: " + pfgmpp_error(config.diffusion.process))
    elif name == "spacing":
        if value not in timesteps.SPACINGS:
            raise ValueError(f"{origin}: unknown spacing {value!r}; expected one of "
                             f"{', '.join(timesteps.SPACINGS)}")
    elif name == "guidance":
        if not (isinstance(value, dict) and "name" not in value):   # a partial section is
            guidance_lib.resolve(value, where=origin)                  # checked with the run's
    elif name == "params":
        have = param_names(config) if config is not None else None
        if have is not None and value not in have:
            raise ValueError(f"{origin}: unknown parameter set {value!r}; this run has "
                             f"{', '.join(sorted(have))}")


def resolve_guidance(run: Run, given, default, origin: str, default_origin: str) -> dict:
    """The guidance section of a draw: ``given`` (a section, partial section, number or name) over
    the run's ``default``; on an unconditional model a method that needs classes becomes 'none'
    (the default) or is refused (when given and not the identity)."""
    base = guidance_lib.resolve(default, where=default_origin)
    sec = base if given is None else guidance_lib.resolve(given, where=origin, base=base)
    if not run.num_classes and guidance_lib.get(sec["name"]).needs_classes:
        if given is not None and not guidance_lib.split(sec)[0][1]:
            raise ValueError(f"{origin} {guidance_lib.describe(sec)}: this run's model is "
                             f"unconditional (no classes), so there is nothing to guide; leave it "
                             f"out")
    return resolve_for(run, sec)


def resolve_for(run: Run, guidance) -> dict:
    """The guidance section a draw from ``run`` uses: unconditional runs take only methods that
    need no classes (classifier-free guidance becomes 'none'); on a run whose model takes the
    guidance scale as input, classifier-free guidance at scale w is that input (guidance_input)."""
    sec = guidance_lib.resolve(guidance)
    if not run.num_classes and guidance_lib.get(sec["name"]).needs_classes:
        sec = guidance_lib.resolve(None)
    if sec["name"] == "classifier_free" and run.config.model.get("guidance_embed", False):
        # a guidance-distilled student computes the guided x0 itself (distill/guided.py)
        sec = guidance_lib.resolve({"name": "guidance_input", "scale": sec["scale"]})
    return sec


def settings(run: Run, section: str = "sample", *, names: dict | None = None, **given) -> dict:
    """The settings a draw from ``run`` uses, checked: for each of num, sampler, steps, spacing,
    guidance, params and seed the value in ``given`` if not None, else the default of the run's
    config ``section`` ('sample' or 'eval', see ``DEFAULTS``). ``names`` maps a setting to how the
    caller calls it (e.g. ``{'num': '--num'}``) for the error messages. ``guidance`` is a resolved
    section (``guidance.resolve``); 'none' for an unconditional model. Returns ``{setting: value,
    ..., 'checkpoint_step': run.step}``."""
    names = names or {}
    unknown = set(given) - set(DEFAULTS[section]) - {"seed"}
    if unknown:
        raise TypeError(f"settings() got unknown setting(s) {sorted(unknown)}")
    out = {}
    order = sorted(DEFAULTS[section].items(), key=lambda kv: given.get(kv[0]) is None)
    for name, key in order:  # the values given first: their mistakes are reported first
        value = given.get(name)
        default_origin = f"config.{key} of this run (the default of {names.get(name, name)})"
        origin = default_origin if value is None else names.get(name, name)
        if name == "guidance":
            out[name] = resolve_guidance(run, value, _lookup(run.config, key),
                                         names.get(name, name), f"config.{key}")
            continue
        if value is None:
            value = _lookup(run.config, key)
        if name in ("num", "steps"):
            value = int(value) if isinstance(value, (int, np.integer)) else value
        check_setting(name, value, origin, run)
        out[name] = value
    out = {name: out[name] for name in DEFAULTS[section]}
    seed = given.get("seed")
    out["seed"] = DEFAULT_SEED[section] if seed is None else int(seed)
    out["checkpoint_step"] = run.step
    return out
