"""Distillation on digits (the issue's goal table): the Quickstart teacher at 20-512 NFE against
distilled students at 8/4/2/1 steps, every one judged by the teacher's evaluation classifier
(Frechet distance of its features and class accuracy, 500 samples, guidance scale 3).

    python experiments/distill_digits.py [--workdir_root /tmp/diffjax_exp] [--quick]
    python experiments/distill_digits.py --data shapes16 --workdir_root /tmp/diffjax_exp_shapes

Students (each a `diffjax distill` run of configs/distill_*.py, reused when already trained):
    guided      Meng et al. 2023: stage 1 (w as input, configs/distill_guided.py), then stage 2
                (configs/distill_progressive.py from it: 32 -> 1 steps, one checkpoint per halving)
                sampled at w = 3 by DDIM and by the stochastic 'ddim_renoise' sampler
    pd_fixed    progressive distillation of the teacher guided at a fixed scale 3 (no w input)
    consistency consistency distillation of the guided teacher (1, 2, 4 steps)
    sim         score implicit matching of the guided teacher (1 step)
Goal (issue 17): the 4-step guided student within 10% of the teacher's FD and accuracy at the
same w, a 1-step student within 25%. Prints the table, writes ROOT/distill_<data>.json and
docs/distill_<data>.png (FD against NFE).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from diffjax import inference  # noqa: E402
from diffjax.training import evaluation  # noqa: E402
from experiments.runs import ROOT, ensure_distilled, ensure_trained  # noqa: E402

W = 3.0


def _eval(workdir, teacher, *, steps, sampler, spacing, guidance, step=None, num=500):
    run = inference.load(workdir, step=step)
    out = evaluation.evaluate(run, teacher, num_samples=num, sampler=sampler, steps=steps,
                              guidance=guidance, spacing=spacing, seed=1234)
    return {"fd": out["eval/fd"], "acc": out["eval/accuracy"],
            "seconds": out["eval/sample_seconds"], "floor": out.get("eval/fd_real_floor")}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir_root", default="/tmp/diffjax_exp")
    ap.add_argument("--data", default="digits", choices=["digits", "shapes16"],
                    help="the teacher's recipe: configs/<data>.py")
    ap.add_argument("--teacher", default=None, help="a trained configs/<data>.py run (default: "
                    "ROOT/<data>, trained if missing)")
    ap.add_argument("--quick", action="store_true", help="fewer distillation steps (a smoke run)")
    ap.add_argument("--num", type=int, default=500)
    ap.add_argument("--figure", default=None, help="default: docs/distill_<data>.png")
    args = ap.parse_args(argv)
    root = args.workdir_root
    os.makedirs(root, exist_ok=True)
    teacher = args.teacher or os.path.join(root, args.data)
    ensure_trained(teacher, f"configs/{args.data}.py")
    figure = args.figure or os.path.join(ROOT, "docs", f"distill_{args.data}.png")
    q = args.quick
    steps = lambda n: f"--config.total_steps={n // 10 if q else n}"
    cfg = lambda name: f"configs/distill_{name}.py"
    wd = {k: os.path.join(root, f"distill_{k}") for k in
          ("guided1", "guided", "pd_fixed", "consistency", "sim")}
    per = 300                    # optimizer steps per halving (32 -> 1: 5 halvings)
    ensure_distilled(wd["guided1"], cfg("guided"), teacher, steps(600),
                     "--config.eval.at_end=False")
    for name, t in (("guided", wd["guided1"]), ("pd_fixed", teacher)):
        ensure_distilled(wd[name], cfg("progressive"), t, steps(5 * per),
                         "--config.objective.start_steps=32",
                         f"--config.checkpoint.every={per // 10 if q else per}",
                         "--config.eval.at_end=False",
                         *(["--config.objective.guidance=3"] if name == "pd_fixed" else []))
    ensure_distilled(wd["consistency"], cfg("consistency"), teacher, steps(1500),
                     "--config.objective.guidance=3", "--config.eval.at_end=False")
    ensure_distilled(wd["sim"], cfg("sim"), teacher, steps(1000), "--config.objective.guidance=3",
                     "--config.eval.at_end=False")

    rows = []

    def add(method, nfe_per_step, steps_, **kw):
        r = _eval(**kw, teacher=teacher, steps=steps_, num=args.num)
        rows.append({"method": method, "steps": steps_, "nfe": nfe_per_step * steps_, **r})
        print(f"{method:<24} {steps_:>4} steps {rows[-1]['nfe']:>5} NFE  FD {r['fd']:.3f}  "
              f"acc {r['acc']:.3f}  {r['seconds']:.1f} s", flush=True)

    g = {"name": "classifier_free", "scale": W}
    none = {"name": "classifier_free", "scale": 1.0}
    add("teacher dpmpp_2m", 2, 10, workdir=teacher, sampler="dpmpp_2m", spacing="karras",
        guidance=g)
    for n in (32, 128, 256):
        add("teacher ddim", 2, n, workdir=teacher, sampler="ddim", spacing="nested", guidance=g)
    add("guided stage 1 (w input)", 1, 10, workdir=wd["guided1"], sampler="dpmpp_2m",
        spacing="karras", guidance=g)
    halving_steps = {16: per, 8: 2 * per, 4: 3 * per, 2: 4 * per, 1: 5 * per}
    scale = 0.1 if q else 1.0
    for n, at in halving_steps.items():
        at = int(at * scale)
        for sampler in ("ddim", "ddim_renoise"):
            add(f"guided PD ({sampler})", 1, n, workdir=wd["guided"], sampler=sampler,
                spacing="nested", guidance=g, step=at)
        add("PD of fixed-w teacher", 1, n, workdir=wd["pd_fixed"], sampler="ddim",
            spacing="nested", guidance=none, step=at)
    for n in (1, 2, 4):
        add("consistency", 1, n, workdir=wd["consistency"], sampler="consistency",
            spacing="nested", guidance=none)
    add("SIM", 1, 1, workdir=wd["sim"], sampler="ddim", spacing="karras", guidance=none)

    ref = next(r for r in rows if r["method"] == "teacher ddim" and r["steps"] == 256)
    print(f"\nrelative to the teacher at 256 DDIM steps (512 NFE, FD {ref['fd']:.3f}, acc "
          f"{ref['acc']:.3f}); goal: 4 steps within 10%, 1 step within 25%")
    print(f"{'method':<26}{'steps':>6}{'NFE':>6}{'FD':>8}{'dFD%':>8}{'acc':>7}{'dacc%':>7}{'s':>7}")
    for r in rows:
        r["fd_rel"] = r["fd"] / ref["fd"] - 1
        r["acc_rel"] = r["acc"] / ref["acc"] - 1
        print(f"{r['method']:<26}{r['steps']:>6}{r['nfe']:>6}{r['fd']:>8.3f}"
              f"{100 * r['fd_rel']:>8.1f}{r['acc']:>7.3f}{100 * r['acc_rel']:>7.1f}"
              f"{r['seconds']:>7.1f}")
    with open(os.path.join(root, f"distill_{args.data}.json"), "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=1)
    if figure:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 2, figsize=(10, 4))
        for method in dict.fromkeys(r["method"] for r in rows):
            rs = sorted((r for r in rows if r["method"] == method), key=lambda r: r["nfe"])
            for a, key in zip(ax, ("fd", "acc")):
                a.plot([r["nfe"] for r in rs], [r[key] for r in rs], "o-", label=method)
        for a, key in zip(ax, ("Frechet distance (lower is better)", "class accuracy")):
            a.set_xscale("log", base=2)
            a.set_xlabel("network evaluations per sample")
            a.set_title(key)
        ax[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(figure, dpi=120)
        print(f"figure: {figure}")


if __name__ == "__main__":
    main()
