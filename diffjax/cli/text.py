"""``diffjax text``: samples of a trained discrete (RADD) run with their network evaluations
(diffjax/discrete; Ou et al., ICLR 2025).

    diffjax text --workdir RUN [--num 4 --steps 128 --sampler tau_leaping|euler|aoarm]
        [--no_cache] [--seed 0] [--params NAME --checkpoint_step STEP]

--sampler: tau_leaping (Tweedie tau-leaping, the default) or euler draw in --steps steps on the
log-linear grid and, unless --no_cache, reuse the time-free network's output while no token
changed (the same samples, fewer calls); aoarm reveals one random position per call (seq_len
calls; --steps is ignored). Prints one line per sample, its NFE (the calls drawing it alone would
make) and its text (a mask would show as '_'), then one JSON line: the settings, the batch's NFE
(the calls made for all samples together) and the mean NFE per sample.
"""
from __future__ import annotations

import json

from absl import flags

from diffjax.cli.table import CommandError

SAMPLER_NAMES = ("tau_leaping", "euler", "aoarm")     # = discrete.samplers.SAMPLERS (a test)
DEFAULT_NUM, DEFAULT_STEPS, DEFAULT_SAMPLER = 4, 128, "tau_leaping"

_NO_CACHE = flags.DEFINE_bool("no_cache", False, "text: call the network at every step (no "
                              "reuse of the time-free output while no token changed).")


def check_flags() -> dict:
    """num, steps, sampler, cache, seed from the flags (defaults above), checked before jax is
    imported."""
    F = flags.FLAGS
    num = DEFAULT_NUM if F["num"].value is None else F["num"].value
    steps = DEFAULT_STEPS if F["steps"].value is None else F["steps"].value
    sampler = F["sampler"].value or DEFAULT_SAMPLER
    if num < 1:
        raise CommandError(f"--num must be a positive integer, got {num}")
    if steps < 1:
        raise CommandError(f"--steps must be a positive integer, got {steps}")
    if sampler not in SAMPLER_NAMES:
        raise CommandError(f"diffjax text: unknown --sampler {sampler!r}; valid: "
                           f"{', '.join(SAMPLER_NAMES)}")
    return {"num": int(num), "steps": int(steps), "sampler": sampler,
            "cache": not _NO_CACHE.value, "seed": int(F["seed"].value or 0)}


def draw(workdir: str, *, num: int, steps: int, sampler: str, cache: bool, seed: int,
         params: str | None = None, step: int | None = None) -> dict:
    """Load the run and draw; {'samples': [{'text', 'nfe'}], 'nfe': batch calls, ...}."""
    import numpy as np

    from diffjax.discrete import run as run_lib
    from diffjax.discrete import text_data

    try:
        r = run_lib.load(workdir, params=params, step=step)
    except ValueError as e:
        raise CommandError(str(e)) from e
    res = run_lib.generate(r, num, steps=steps, method=sampler, cache=cache, seed=seed)
    samples = [{"nfe": int(n), "text": text_data.decode(t)}
               for t, n in zip(res.tokens, res.nfe_per_seq)]
    return {"workdir": workdir, "checkpoint_step": r.step, "params": r.params_name,
            "sampler": sampler, "steps": r.seq_len if sampler == "aoarm" else steps,
            "cache": cache and sampler != "aoarm", "seed": seed, "num": num,
            "nfe": int(res.nfe), "nfe_per_sample": float(np.mean(res.nfe_per_seq)),
            "samples": samples}


def cmd_text():
    from diffjax.cli import _need_workdir, _say

    workdir = _need_workdir("text")
    st = check_flags()
    F = flags.FLAGS
    _say(f"diffjax text: {st['num']} samples from {workdir}, sampler {st['sampler']}, "
         f"{st['steps']} steps, cache {'on' if st['cache'] else 'off'}, seed {st['seed']}")
    out = draw(workdir, params=F["params"].value, step=F["checkpoint_step"].value, **st)
    for s in out["samples"]:
        print(f"nfe {s['nfe']:4d}  {s['text']}")
    print(json.dumps({k: v for k, v in out.items() if k != "samples"}))
