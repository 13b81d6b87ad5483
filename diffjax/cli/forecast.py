"""``diffjax forecast``: a trained series run (configs/timeseries_*.py) forecasts its held-out
windows by TSDiff's observation self-guidance, against seasonal-naive and linear baselines, and
optionally refines the linear forecaster's samples on the model's density (diffjax/timeseries).

    diffjax forecast --workdir RUN [--num 32 --steps 50 --sampler ddim --energy quantile
        --guidance_scale 1 --refine none|sgd|lmc --refine_iters 20 --seed 0]

--num: samples per series; --energy quantile|mse|gaussian (the guidance energy; gaussian: the
Tweedie-moment likelihood, exact for Gaussian data); --guidance_scale: s. Prints a table of the
normalized CRPS and the MASE of each method on the run's rolling test windows (stderr) and one
JSON line with the rows and settings (stdout).
"""
from __future__ import annotations

import json
import sys

from absl import flags

from diffjax.cli.table import CommandError

ENERGY_NAMES = ("quantile", "mse", "gaussian")     # = timeseries.self_guidance.ENERGIES (a test)
REFINE_NAMES = ("none", "sgd", "lmc")

_ENERGY = flags.DEFINE_string("energy", None, "forecast: the self-guidance energy, one of "
                              + ", ".join(ENERGY_NAMES) + " (default quantile).")
_SCALE = flags.DEFINE_float("guidance_scale", None, "forecast: the self-guidance scale s "
                            "(default 1).")
_REFINE = flags.DEFINE_string("refine", None, "forecast: also refine the linear forecaster's "
                              "samples on the model's density: none, sgd or lmc (default none).")
_REFINE_ITERS = flags.DEFINE_integer("refine_iters", None, "forecast: refinement iterations "
                                     "(default 20).")


def check_flags() -> dict:
    """The forecast settings from the flags, checked before jax is imported."""
    F = flags.FLAGS
    num = 32 if F["num"].value is None else F["num"].value
    steps = 50 if F["steps"].value is None else F["steps"].value
    energy = _ENERGY.value or "quantile"
    refine = _REFINE.value or "none"
    iters = 20 if _REFINE_ITERS.value is None else _REFINE_ITERS.value
    if num < 2:
        raise CommandError(f"--num must be at least 2 (samples per series), got {num}")
    if steps < 1:
        raise CommandError(f"--steps must be a positive integer, got {steps}")
    if energy not in ENERGY_NAMES:
        raise CommandError(f"--energy {energy!r}: valid: {', '.join(ENERGY_NAMES)}")
    if refine not in REFINE_NAMES:
        raise CommandError(f"--refine {refine!r}: valid: {', '.join(REFINE_NAMES)}")
    if iters < 1:
        raise CommandError(f"--refine_iters must be a positive integer, got {iters}")
    scale = 1.0 if _SCALE.value is None else float(_SCALE.value)
    if not scale >= 0:
        raise CommandError(f"--guidance_scale must be >= 0, got {scale}")
    return {"num_samples": int(num), "steps": int(steps), "energy": energy, "scale": scale,
            "sampler": F["sampler"].value or "ddim", "seed": int(F["seed"].value or 0),
            "refine": None if refine == "none" else refine, "refine_iters": int(iters)}


def cmd_forecast():
    from diffjax import inference
    from diffjax.cli import _load_run, _need_workdir, _say

    workdir = _need_workdir("forecast")
    st = check_flags()
    config = inference.load_config(workdir)
    if config.data.get("name") != "series":
        raise CommandError(f"diffjax forecast needs a run trained on the 'series' data source "
                           f"(configs/timeseries_sunspots.py); {workdir} was trained on "
                           f"{config.data.get('name')!r}")
    inference.check_setting("sampler", st["sampler"], "--sampler")
    run = _load_run(workdir, {}, {})
    from diffjax.timeseries import evaluate

    _say(f"diffjax forecast: {config.data.series} test windows, {st['num_samples']} samples per "
         f"series from {workdir} checkpoint step {run.step}, {st['sampler']} {st['steps']} steps, "
         f"tsdiff {st['energy']} s={st['scale']:g}"
         + (f", refine {st['refine']} x{st['refine_iters']}" if st["refine"] else ""))
    rows = evaluate.evaluate(run, **st)
    _say(evaluate.table(rows))
    print(json.dumps({"series": config.data.series, "checkpoint_step": run.step, **st,
                      "rows": rows}))
    sys.stdout.flush()
