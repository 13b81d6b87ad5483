"""T-Stitch (Pan et al., ICLR 2024) on the Quickstart digits: wall time per draw and quality against
the fraction r of the sampling steps given to a 4x smaller network (the ``tstitch`` guidance).

    python experiments/tstitch_digits.py                       # trains both runs if not cached
    python experiments/tstitch_digits.py --samplers dpmpp_2m:10 heun:18 --num 500

Large model: configs/digits.py; small model: configs/digits_weak.py trained as long
(``--config.total_steps=1000 --config.checkpoint.every=1000``: the same task and data, 8 instead of
16 channels, ~4x fewer parameters). Both draw with classifier-free guidance (scale 3) inside the
active model. For each r in 0, 0.1, ..., 1: seconds per draw of --num samples (median of
--repeats after one warm-up draw, the draws of all fractions interleaved so that a change of the
machine's load spreads over all of them; r is traced: every fraction runs one compiled program)
and ``evaluation.evaluate(run, LARGE_WORKDIR, ...)``: the Frechet distance in the large run's
evaluation-classifier features and its class accuracy, so every point is judged by the same
classifier. The Pareto front (no point both faster and lower FD) is marked. Reference rows: each
run alone with plain classifier-free guidance (no T-Stitch dispatch).

Claim checked (direction, at this scale): the paper's DiT-S -> DiT-XL stitch replaces the first
~40% of the steps at no FID cost with time falling about linearly in r; the speed-up here is
bounded by the small model's cost relative to the large one's on a 2-core CPU.
Writes the table as JSON next to the figure (--figure, default docs/tstitch_digits.png).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from diffjax import inference  # noqa: E402
from diffjax.training import evaluation  # noqa: E402
from experiments.runs import ROOT, ensure_trained  # noqa: E402

FRACTIONS = [round(0.1 * i, 1) for i in range(11)]
SMALL_OVERRIDES = ("--config.total_steps=1000", "--config.checkpoint.every=1000")


def seconds_per_draw(draws: dict, repeats: int) -> dict:
    """{name: (wall, cpu)}: the median wall time and process CPU time of ``repeats`` calls of each
    ``draws[name]()``, after one warm-up call each. The calls are interleaved (round r times every
    draw once), so a change of the machine's load during the sweep spreads over all of them; the
    CPU time (all of XLA's threads) is the less load-sensitive measure of the work done."""
    for draw in draws.values():
        draw()
    times = {name: [] for name in draws}
    for _ in range(repeats):
        for name, draw in draws.items():
            t0, c0 = time.perf_counter(), time.process_time()
            draw()
            times[name].append((time.perf_counter() - t0, time.process_time() - c0))
    return {name: (statistics.median(w for w, _ in t), statistics.median(c for _, c in t))
            for name, t in times.items()}


def pareto(rows: list) -> None:
    """Mark rows no other row beats on both seconds and FD (``pareto`` True)."""
    for r in rows:
        r["pareto"] = not any(o is not r and o["seconds"] <= r["seconds"] and o["fd"] <= r["fd"]
                              and (o["seconds"] < r["seconds"] or o["fd"] < r["fd"]) for o in rows)


def measure(runs: dict, large_dir: str, small_dir: str, sampler: str, steps: int, args):
    """(rows of the fraction sweep, reference rows: each run alone with plain classifier-free
    guidance, the ``classifier_free`` program without the T-Stitch dispatch)."""
    cells = {f"r={r:.1f}": (runs["large"], {"name": "tstitch", "fraction": r, "scale": args.scale,
                                            "small_workdir": small_dir}) for r in args.fractions}
    cells.update({f"{name} alone": (run, args.scale) for name, run in runs.items()})
    draw = lambda run, g: lambda: inference.generate(run, args.num, sampler=sampler, steps=steps,
                                                     guidance=g, seed=args.seed)
    secs = seconds_per_draw({k: draw(*v) for k, v in cells.items()}, args.repeats)
    rows, refs = [], []
    for name, (run, g) in cells.items():
        ev = evaluation.evaluate(run, large_dir, num_samples=args.num, sampler=sampler, steps=steps,
                                 guidance=g, seed=args.seed)
        row = dict(sampler=sampler, steps=steps, seconds=secs[name][0],
                   cpu_seconds=secs[name][1], fd=ev["eval/fd"],
                   accuracy=ev["eval/accuracy"], fd_real_floor=ev.get("eval/fd_real_floor"))
        if isinstance(g, dict):
            r = g["fraction"]
            rows.append(dict(row, fraction=r,
                             small_steps=min(max(math.ceil(round(r * steps, 9)), 0), steps)))
        else:
            refs.append(dict(row, model=name.split()[0]))
        print(f"  {sampler} {steps} {name}: {secs[name][0]:.2f} s ({secs[name][1]:.2f} s CPU)  "
              f"FD {ev['eval/fd']:.5f}  "
              f"accuracy {ev['eval/accuracy']:.1%}", flush=True)
    base = min(rows, key=lambda row: row["fraction"])                # r = 0: the large model
    for row in rows:
        row["speedup"] = base["seconds"] / row["seconds"]
        row["cpu_speedup"] = base["cpu_seconds"] / row["cpu_seconds"]
    pareto(rows)
    return rows, refs


def table(rows: list, refs: list) -> str:
    lines = [f"{'sampler':<12} {'r':>4} {'small':>5} {'seconds':>8} {'speed-up':>8} {'CPU s':>7} "
             f"{'CPU x':>6} {'FD':>8} {'accuracy':>8}  pareto"]
    for r in rows:
        lines.append(f"{r['sampler'] + ' ' + str(r['steps']):<12} {r['fraction']:>4.1f} "
                     f"{r['small_steps']:>5d} {r['seconds']:>8.2f} {r['speedup']:>7.2f}x "
                     f"{r['cpu_seconds']:>7.2f} {r['cpu_speedup']:>5.2f}x "
                     f"{r['fd']:>8.5f} {r['accuracy']:>8.1%}  {'*' if r['pareto'] else ''}")
    for r in refs:
        lines.append(f"{r['sampler'] + ' ' + str(r['steps']):<12} {r['model'] + ' alone (cfg)':>20}"
                     f" {r['seconds']:>8.2f} {'':>8} {r['cpu_seconds']:>7.2f} {'':>6} "
                     f"{r['fd']:>8.5f} {r['accuracy']:>8.1%}")
    return "\n".join(lines)


def plot(rows: list, out: str) -> None:
    """Seconds per draw vs FD per sampler, the Pareto front highlighted, r written at each point."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for sampler in dict.fromkeys((r["sampler"], r["steps"]) for r in rows):
        cells = [r for r in rows if (r["sampler"], r["steps"]) == sampler]
        line, = ax.plot([r["seconds"] for r in cells], [r["fd"] for r in cells], "o-", alpha=0.6,
                        label=f"{sampler[0]} {sampler[1]} steps")
        front = sorted((r for r in cells if r["pareto"]), key=lambda r: r["seconds"])
        ax.plot([r["seconds"] for r in front], [r["fd"] for r in front], "s-", ms=9, lw=2.5,
                color=line.get_color(), mfc="none", label=f"{sampler[0]} Pareto front")
        for r in cells:
            ax.annotate(f"{r['fraction']:.1f}", (r["seconds"], r["fd"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)
    ax.set_xlabel(f"seconds per draw of {rows[0].get('num', '')} samples (median)")
    ax.set_ylabel("Frechet distance (lower is better)")
    ax.set_title("T-Stitch on digits: fraction r of steps on the 4x smaller model")
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110)
    print("figure:", out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir_root", default=os.path.join(tempfile.gettempdir(), "diffjax_exp"),
                    help="the two runs live in ROOT/tstitch_large and ROOT/tstitch_small "
                         "(trained when empty)")
    ap.add_argument("--samplers", nargs="+", default=["dpmpp_2m:10"],
                    help="SAMPLER:STEPS, e.g. dpmpp_2m:10 heun:18")
    ap.add_argument("--fractions", type=float, nargs="+", default=FRACTIONS)
    ap.add_argument("--scale", type=float, default=3.0, help="classifier-free guidance scale")
    ap.add_argument("--num", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--figure", default=os.path.join(ROOT, "docs", "tstitch_digits.png"))
    args = ap.parse_args(argv)
    large_dir = os.path.join(args.workdir_root, "tstitch_large")
    small_dir = os.path.join(args.workdir_root, "tstitch_small")
    ensure_trained(large_dir, os.path.join(ROOT, "configs", "digits.py"))
    ensure_trained(small_dir, os.path.join(ROOT, "configs", "digits_weak.py"), *SMALL_OVERRIDES)
    runs = {"large": inference.load(large_dir), "small": inference.load(small_dir)}
    rows, refs = [], []
    for spec in args.samplers:
        sampler, _, steps = spec.partition(":")
        steps = int(steps or 10)
        got = measure(runs, large_dir, small_dir, sampler, steps, args)
        rows, refs = rows + got[0], refs + got[1]
    for r in rows:
        r["num"] = args.num
    print("\n" + table(rows, refs))
    out = os.path.splitext(args.figure)[0] + ".json"
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"rows": rows, "reference": refs, "scale": args.scale, "num": args.num,
                   "repeats": args.repeats, "large_workdir": large_dir,
                   "small_workdir": small_dir}, f, indent=1)
    print("json:", out)
    plot(rows, args.figure)


if __name__ == "__main__":
    main()
