"""Difficulty curriculum vs uniform noise-level sampling on digits: convergence speed.

Kim et al. (ICLR 2025) claim that training from the easiest (highest-noise) timestep clusters to
the hardest, with adaptive pacing, converges faster and to a better FID. Here: configs/digits.py
(EDM, log-normal noise levels) trained twice from the same seed, once plainly and once with the
curriculum over N equal-mass bins of the same log-normal (``config.diffusion.curriculum``),
checkpointed every ``--every`` steps; each checkpoint is evaluated by the Frechet distance in the
digits classifier's feature space (500 guided samples, DPM-Solver++(2M) 10 steps, the same
classifier and seed for both), and the table gives the FD per checkpoint and the steps each run
needs to reach a threshold (by default 1.25 x the plain run's final FD).

    python experiments/curriculum_digits.py [--quick] [--clusters 10 --patience 20]

The curriculum's N and patience are not pinned down by any source we could read (the card says
20/200 and 10/2 in two versions of the one reimplementation): at a 1000-step run 200 steps of
patience would never leave the first stages, so the defaults here are scaled to the run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from diffjax import inference  # noqa: E402
from diffjax.training import evaluation  # noqa: E402
from experiments.runs import ROOT, ensure_trained  # noqa: E402


def _stages(workdir):
    """The curriculum stage logged at each step (metrics.jsonl), if the run has one."""
    path = os.path.join(workdir, "metrics.jsonl")
    out = {}
    if os.path.isfile(path):
        for line in open(path, encoding="utf-8"):
            r = json.loads(line)
            if "curriculum_stage" in r and "step" in r:
                out[int(r["step"])] = float(r["curriculum_stage"])
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir_root", default="/tmp/diffjax_exp")
    ap.add_argument("--quick", action="store_true", help="300 steps, 200 samples (a smoke run)")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--clusters", type=int, default=10)
    ap.add_argument("--patience", type=int, default=20)
    ap.add_argument("--smoothing", type=float, default=0.9)
    ap.add_argument("--num", type=int, default=500)
    ap.add_argument("--threshold", type=float, default=1.25,
                    help="x the plain run's final FD")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--figure", default=os.path.join(ROOT, "docs", "curriculum_digits.png"))
    args = ap.parse_args(argv)
    steps, every, num = (300, 50, 200) if args.quick else (args.steps, args.every, args.num)
    tag = "_quick" if args.quick else ""
    common = [f"--config.total_steps={steps}", f"--config.checkpoint.every={every}",
              f"--config.checkpoint.keep={steps // every + 1}", "--config.eval.at_end=False",
              f"--config.seed={args.seed}"]
    runs = {
        "uniform (log-normal)": (os.path.join(args.workdir_root, f"curriculum_off{tag}"), []),
        f"curriculum N={args.clusters} tau={args.patience}": (
            os.path.join(args.workdir_root,
                         f"curriculum_N{args.clusters}_p{args.patience}{tag}"),
            [f"--config.diffusion.curriculum.clusters={args.clusters}",
             f"--config.diffusion.curriculum.patience={args.patience}",
             f"--config.diffusion.curriculum.smoothing={args.smoothing}"]),
    }
    for wd, extra in runs.values():
        ensure_trained(wd, "configs/digits.py", *common, *extra)
    clf_dir = next(iter(runs.values()))[0]    # one classifier (feature space) for both runs
    table = {}
    for name, (wd, _) in runs.items():
        table[name] = {}
        for at in range(every, steps + 1, every):
            run = inference.load(wd, step=at)
            out = evaluation.evaluate(run, clf_dir, num_samples=num, seed=1234)
            table[name][at] = {"fd": out["eval/fd"], "acc": out["eval/accuracy"]}
            print(f"{name:<28} step {at:>5}  FD {out['eval/fd']:.4g}  acc "
                  f"{out['eval/accuracy']:.3f}", flush=True)
    plain = table[next(iter(runs))]
    thr = args.threshold * plain[steps]["fd"]
    print(f"\nFD threshold {thr:.4g} (= {args.threshold} x the plain run's final FD)")
    print(f"{'step':>6}" + "".join(f"{n[:28]:>30}" for n in table))
    for at in range(every, steps + 1, every):
        print(f"{at:>6}" + "".join(f"{table[n][at]['fd']:>22.4g} ({table[n][at]['acc']:.2f})"
                                     for n in table))
    reach = {}
    for n, rows in table.items():
        hit = [at for at in sorted(rows) if rows[at]["fd"] <= thr]
        reach[n] = hit[0] if hit else None
        print(f"{n:<28} reaches the threshold at step {reach[n]}")
    stages = {n: _stages(wd) for n, (wd, _) in runs.items()}
    cur = [s for s in stages.values() if s]
    if cur:
        st = cur[0]
        firsts = {}
        for step_, stage in sorted(st.items()):
            firsts.setdefault(int(stage), step_)
        print("curriculum stage first logged at step: "
              + ", ".join(f"{k}: {v}" for k, v in sorted(firsts.items())))
    res = {"steps": steps, "every": every, "num": num, "threshold": thr, "table": table,
           "reach": reach}
    with open(os.path.join(args.workdir_root, f"curriculum_digits{tag}.json"), "w") as f:
        json.dump(res, f, indent=1)
    if args.figure:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        for n, rows in table.items():
            ax.plot(sorted(rows), [rows[a]["fd"] for a in sorted(rows)], "o-", label=n)
        ax.axhline(thr, color="gray", ls=":", label="threshold")
        ax.set_xlabel("training step")
        ax.set_ylabel("Frechet distance (classifier features)")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.figure if not args.quick else args.figure.replace(".png", "_quick.png"),
                    dpi=120)
    return res


if __name__ == "__main__":
    main()
