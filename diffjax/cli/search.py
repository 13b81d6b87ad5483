"""``diffjax search``: spend a budget of network evaluations on better samples of a trained run
(diffjax/search, docs/SEARCH.md).

    diffjax search --workdir RUN --method dts|dts_star|dts_uniform|bon|random|zero_order|paths|smc
        --budget NFE --reward class:7|classes:1,3|even|odd [--num 16 --out grid.png]
        [--label K] [--classifier_workdir CLF] [--lam 1] [--steps 50 --sampler NAME --seed K]

--reward: the log-probability of a class (class:K), of a set of classes (classes:K1,K2; even and
odd digits, the DTS paper's task), or 'label' (the class --label), under the run's evaluation
classifier (trained and cached in WORKDIR/classifier, as ``diffjax evaluate`` does) or, with
--classifier_workdir, a clean-image classifier run (configs/digits_clean_classifier.py).
--label K draws from the class-conditional model of K (with the run's guidance, or --guidance);
without it a class-conditional run draws unconditionally (guidance scale 0) and the search alone
steers. --budget is the total NFE for all --num samples; the method decides how to spend it
(search/methods.py). Prints JSON: the NFE spent, the reward (mean, min, max), the diversity (mean
pairwise RMS distance of the samples) and what the budget bought.
"""
from __future__ import annotations

import json
import os
import sys

from absl import flags

from diffjax.cli.table import CommandError

METHOD_NAMES = ("dts", "dts_star", "dts_uniform", "bon", "random", "zero_order", "paths",
                "smc")  # = search.methods.METHODS (a test keeps them equal)
REWARD_NAMES = ("class:K", "classes:K1,K2,...", "even", "odd", "label")

_BUDGET = flags.DEFINE_integer("budget", None, "search: total network evaluations (NFE) for all "
                               "--num samples.")
_REWARD = flags.DEFINE_string("reward", None, "search: the verifier, class:K, classes:K1,K2, even, "
                              "odd or label (the class --label): log p(class | x) under a "
                              "classifier.")
_LABEL = flags.DEFINE_integer("label", None, "search: draw from the class-conditional model of "
                              "this class (default: unconditional).")
_LAM = flags.DEFINE_float("lam", 1.0, "search (dts, dts_star, smc): inverse temperature lambda of "
                          "the target p(x) exp(lambda r(x)).")
_CLF = flags.DEFINE_string("classifier_workdir", None, "search: a clean-image classifier run for "
                           "the reward (default: the run's evaluation classifier).")


def _method() -> str:
    return flags.FLAGS["method"].value or "dts"


def check_flags():
    """The command's own mistakes, answered before jax is imported."""
    if _method() not in METHOD_NAMES:
        raise CommandError(f"unknown --method {_method()!r}; valid: {', '.join(METHOD_NAMES)}")
    if _BUDGET.value is None:
        raise CommandError("diffjax search needs --budget NFE (the network evaluations to spend, "
                           "e.g. --budget 20000)")
    if _BUDGET.value < 1:
        raise CommandError(f"--budget must be a positive integer, got {_BUDGET.value}")
    spec = _REWARD.value
    if not spec:
        raise CommandError(f"diffjax search needs --reward ({', '.join(REWARD_NAMES)})")
    name = spec.partition(":")[0]
    if spec not in ("even", "odd", "label") and not (name in ("class", "classes") and ":" in spec):
        raise CommandError(f"unknown --reward {spec!r}; valid: {', '.join(REWARD_NAMES)}")
    if spec == "label" and _LABEL.value is None:
        raise CommandError("--reward label scores the class --label: pass --label K")
    if not _LAM.value > 0:
        raise CommandError(f"--lam must be > 0, got {_LAM.value}")
    for f in ("num", "steps"):
        v = flags.FLAGS[f].value
        if v is not None and v < 1:
            raise CommandError(f"--{f} must be a positive integer, got {v}")
    if _CLF.value and not os.path.isdir(_CLF.value):
        raise CommandError(f"--classifier_workdir {_CLF.value}: no such directory; train one with "
                           f"diffjax train --config configs/digits_clean_classifier.py")


class _Progress:
    """One stderr line per tenth of the budget."""

    def __init__(self, say, method: str):
        self.say, self.method, self.shown = say, method, 0

    def __call__(self, nfe: int, budget: int):
        tenth = min(10, int(10 * nfe / max(budget, 1)))
        if tenth > self.shown:
            self.shown = tenth
            bar = "#" * tenth + "." * (10 - tenth)
            self.say(f"diffjax search {self.method}: [{bar}] {nfe}/{budget} NFE")


def cmd_search():
    import jax
    import jax.numpy as jnp
    import numpy as np

    from diffjax import inference
    from diffjax.cli import _load_run, _need_workdir, _say, _typed_settings
    from diffjax.core import timesteps
    from diffjax.search import methods, reward_models, verifiers

    workdir = _need_workdir("search")
    check_flags()
    typed, names = _typed_settings()
    run = _load_run(workdir, typed, names, "search")
    method = _method()
    num = int(typed.get("num", 16))
    steps = int(typed.get("steps", 50))
    spacing = typed.get("spacing", run.config.sample.spacing)
    sampler = typed.get("sampler") or methods.default_sampler(method)
    seed = int(typed.get("seed", 0))
    label = _LABEL.value
    if label is not None and not (run.num_classes and 0 <= label < run.num_classes):
        has = (f"classes 0 .. {run.num_classes - 1}" if run.num_classes
               else "no classes (unconditional)")
        raise CommandError(f"--label {label}: this run has {has}")
    if "guidance" in typed and label is None and run.num_classes:
        raise CommandError("--guidance steers the class-conditional model of --label; pass "
                           "--label K with it (without --label the search draws unconditionally)")
    if label is None:
        guidance = 0.0 if run.num_classes else 1.0
    else:
        guidance = inference.settings(run, "sample", names=names, **typed)["guidance"]
    sig = timesteps.sigmas(run.process, steps, spacing)
    D = inference.denoiser(run, guidance, params_name=typed.get("params"), sigmas=sig)
    if _CLF.value:
        logits, classes = reward_models.clean_classifier(_CLF.value, run)
    else:
        logits, classes = reward_models.evaluation_classifier(workdir, run.config)
    spec = f"class:{label}" if _REWARD.value == "label" else _REWARD.value
    verifier = verifiers.from_spec(spec, logits, classes)
    cond = {"label": jnp.full((1,), 0 if label is None else label, jnp.int32)} \
        if run.num_classes else None
    out_png = flags.FLAGS["out"].value or os.path.join(workdir, "search.png")
    _say(f"diffjax search: {num} samples from {workdir} checkpoint step {run.step}, method "
         f"{method}, budget {_BUDGET.value} NFE, reward {_REWARD.value} "
         f"({'classifier ' + _CLF.value if _CLF.value else 'the run evaluation classifier'}), "
         f"{'label ' + str(label) if label is not None else 'unconditional'}, sampler {sampler}, "
         f"{steps} steps, seed {seed} -> {out_png}")
    res = methods.run(method, jax.random.key(seed), D, sig, verifier, num=num,
                      example_shape=run.example_shape, budget=_BUDGET.value, cond=cond,
                      sampler=sampler, progress=_Progress(_say, method), lam=_LAM.value)
    x = np.clip(np.asarray(res.x), -1.0, 1.0)
    r = np.asarray(res.reward, np.float64)
    result = {"out": out_png, "method": method, "budget": _BUDGET.value, "nfe": res.nfe,
              "reward": _REWARD.value, "reward_mean": float(r.mean()),
              "reward_min": float(r.min()), "reward_max": float(r.max()),
              "diversity": methods.diversity(x), "num": num, "label": label,
              "sampler": sampler, "steps": steps, "seed": seed, "checkpoint_step": run.step,
              **{k: v for k, v in res.settings.items() if k != "sampler"}}
    inference.save_grid(x, out_png)
    if flags.FLAGS["npz"].value:
        np.savez(flags.FLAGS["npz"].value, x=x, reward=r)
        result["npz"] = flags.FLAGS["npz"].value
    print(json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in result.items()}))
    sys.stdout.flush()
