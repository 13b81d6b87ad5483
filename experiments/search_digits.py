"""Inference-time search on digits, as the DTS paper's Table 1 at small scale: reward and Frechet
distance to the real class against NFE, for every method of diffjax/search at equal budgets.

    python experiments/search_digits.py --workdir /tmp/qs --clean /tmp/qs_clean   # trains if empty

The base model is the Quickstart run drawn *unconditionally* (guidance scale 0): only the search
steers. The reward is log p(class | x) of the clean-image classifier (--clean,
configs/digits_clean_classifier.py); quality is judged by the *other* classifier, the run's
evaluation classifier (training/evaluation.py): the Frechet distance of its features to the real
digits of the target class(es) (FD; a perfect sampler of the class gets the real-vs-real floor)
and its accuracy (argmax in the target set). Tasks: one digit (class:K) and even digits (the
paper's even/odd task). Each method spends budget = num x steps x m NFE for num samples, for
m in --multiples (m = 1: one sampler run per sample, no search).

Claims (Jain et al. 2025, Table 1 and Sec. 5): DTS reaches the best baseline's FD with up to 10x
fewer NFE; DTS* reaches best-of-N's reward with up to 5x fewer NFE. Prints a table per task and
writes WORKDIR/search_digits.json and a reward / FD vs NFE figure (--figure).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from diffjax import inference  # noqa: E402
from diffjax.core import timesteps  # noqa: E402
from diffjax.search import methods, reward_models, verifiers  # noqa: E402
from diffjax.training import evaluation  # noqa: E402
from experiments.runs import ROOT, ensure_trained  # noqa: E402

METHODS = ("dts", "dts_uniform", "dts_star", "bon", "random", "zero_order", "paths", "smc")


def target_classes(task: str, num_classes: int) -> list[int]:
    if task in ("even", "odd"):
        return list(range(0 if task == "even" else 1, num_classes, 2))
    return [int(c) for c in task.partition(":")[2].split(",")]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--clean", required=True, help="the clean-classifier run (the reward)")
    ap.add_argument("--tasks", nargs="+", default=["class:3", "even"])
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--multiples", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--num", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--figure", default=None)
    ap.add_argument("--from-log", nargs="+", default=None,
                    help="only print the tables (and --figure) of the JSON rows in these logs")
    a = ap.parse_args(argv)
    if a.from_log:
        rows = [json.loads(line) for f in a.from_log for line in open(f, encoding="utf-8")
                if line.startswith('{"task"')]
        print_tables(rows)
        if a.figure:
            plot(rows, a.figure)
        return
    ensure_trained(a.workdir, os.path.join(ROOT, "configs", "digits.py"))
    ensure_trained(a.clean, os.path.join(ROOT, "configs", "digits_clean_classifier.py"))
    run = inference.load(a.workdir)
    sig = timesteps.sigmas(run.process, a.steps, run.config.sample.spacing)
    D = inference.denoiser(run, 0.0, sigmas=sig)                 # the unconditional model
    logits, classes = reward_models.clean_classifier(a.clean, run)
    judge = evaluation.get_classifier(a.workdir, run.config)
    x_real, y_real, _ = evaluation._data_arrays(run.config)
    cond = {"label": jnp.zeros((1,), jnp.int32)}
    rows = []
    for task in a.tasks:
        want = target_classes(task, classes)
        verifier = verifiers.from_spec(task, logits, classes)
        real = judge.features(x_real[np.isin(y_real, want)])
        half = len(real) // 2
        floor = evaluation.frechet_distance(*evaluation.feature_stats(real[:half]),
                                            *evaluation.feature_stats(real[half:]))
        ref = evaluation.feature_stats(real)
        for m in a.multiples:
            budget = a.num * a.steps * m
            for name in a.methods:
                t = time.time()
                try:
                    out = methods.run(name, jax.random.key(a.seed), D, sig, verifier, num=a.num,
                                      example_shape=run.example_shape, budget=budget, cond=cond)
                except ValueError as e:          # the budget does not pay for this method
                    print(f"{task} m={m} {name}: skipped ({e})", flush=True)
                    continue
                x = np.clip(np.asarray(out.x), -1, 1)
                fd = evaluation.frechet_distance(*ref, *evaluation.feature_stats(
                    judge.features(x)))
                acc = float(np.mean(np.isin(judge.logits(x).argmax(-1), want)))
                row = {"task": task, "method": name, "multiple": m, "budget": budget,
                       "nfe": out.nfe, "reward": float(np.mean(np.asarray(out.reward))),
                       "fd": fd, "fd_floor": floor, "accuracy": acc,
                       "diversity": methods.diversity(x), "seconds": round(time.time() - t, 1),
                       "settings": {k: v for k, v in out.settings.items()}}
                rows.append(row)
                print(json.dumps(row), flush=True)
    with open(os.path.join(a.workdir, "search_digits.json"), "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=1)
    print_tables(rows)
    if a.figure:
        plot(rows, a.figure)


def print_tables(rows):
    for task in dict.fromkeys(r["task"] for r in rows):
        sub = [r for r in rows if r["task"] == task]
        print(f"\n{task} (FD floor, real vs real: {sub[0]['fd_floor']:.4f})")
        print("| method | NFE | reward | FD | accuracy | diversity |")
        print("|---|---|---|---|---|---|")
        seen = set()
        for r in sorted(sub, key=lambda r: (r["method"], r["nfe"])):
            if (r["method"], r["nfe"]) in seen:      # a budget that bought the same search
                continue
            seen.add((r["method"], r["nfe"]))
            print(f"| {r['method']} | {r['nfe']} | {r['reward']:.3f} | {r['fd']:.4f} | "
                  f"{r['accuracy']:.3f} | {r['diversity']:.3f} |")


def plot(rows, path):
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(2, len(tasks), figsize=(5 * len(tasks), 7), squeeze=False)
    for j, task in enumerate(tasks):
        for name in dict.fromkeys(r["method"] for r in rows):
            sub = sorted([r for r in rows if r["task"] == task and r["method"] == name],
                         key=lambda r: r["nfe"])
            if not sub:
                continue
            nfe = [r["nfe"] for r in sub]
            axes[0, j].plot(nfe, [r["reward"] for r in sub], "o-", label=name)
            axes[1, j].plot(nfe, [r["fd"] for r in sub], "o-", label=name)
        axes[1, j].axhline(sub[0]["fd_floor"], color="grey", ls=":", label="real floor")
        for i, what in enumerate(("reward (log p, clean classifier)", "FD to the real class")):
            axes[i, j].set_xscale("log")
            axes[i, j].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            axes[i, j].set_xlabel("NFE")
            axes[i, j].set_ylabel(what)
            axes[i, j].set_title(task)
        axes[1, j].set_yscale("log")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print("wrote", path)


if __name__ == "__main__":
    main()
