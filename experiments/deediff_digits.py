"""DeeDiff / AdaDiff early exit on digits (Tang et al., arXiv 2309.17074): executed layers, wall time
and sample quality of a DiT fine-tuned with the ``deediff`` objective, against its exit threshold.

    python experiments/deediff_digits.py                         # trains what is missing, ~40 min
    python experiments/deediff_digits.py --workdir_root /tmp/dd --thresholds 0.95 0.9 0.8

Runs: the base DiT (configs/digits_dit.py, trained unless WORKDIR_ROOT/base has a checkpoint) and
its DeeDiff student (configs/distill_deediff.py fine-tuned from it into WORKDIR_ROOT/deediff, by
``diffjax distill``). Every point draws with DPM-Solver++(2M), 10 steps, classifier-free scale 3
(the base run's settings); the early-exit points use the ``early_exit`` guidance at each threshold
(exit at the first block whose mean confidence over the batch of conditional + null rows is >
thr; thr > 1 never exits). Baselines: the base and the student without exits; the base recipe
trained for the base's + the fine-tune's steps (``--long_steps``, 1000 + 600: the student had that
much training, so quality it gains over the base may be training, not DeeDiff); and the student cut
at a fixed block k for every call (its confidence modules replaced by constants: the same program,
no adaptivity).

Measured per point: layers = blocks executed per network call, averaged over every call of the
evaluation draw (the sampler's steps x batches; a debug callback reads the exit layer the network
sows); seconds = wall time of one draw of ``--batch`` images (a warm-up each, then the median
of ``--repeats`` rounds over all points in turn, no callback); FD and class accuracy of ``--num`` samples under the BASE run's evaluation classifier
(``evaluation.evaluate(run, BASE_WORKDIR)``), so every point is judged by the same classifier.
Claim (abstract / AdaDiff README): >40% fewer layers (speed-up) with minimal quality loss, and the
DeeDiff model can match or beat the full baseline's FID. Prints the table, writes --json and the
figure --figure (FD against layers and against time).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import diffjax.distill  # noqa: E402,F401  (registers 'deediff' and the 'early_exit' guidance)
from diffjax import inference  # noqa: E402
from diffjax.training import evaluation  # noqa: E402
from diffjax.training import step as step_lib  # noqa: E402
from experiments.runs import ROOT, ensure_trained  # noqa: E402

THRESHOLDS = (1.0, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5, 0.45)
FIXED_EXITS = (2, 3, 4, 5)


def ensure_student(student: str, base: str, *overrides: str):
    """``diffjax distill --config configs/distill_deediff.py --teacher BASE --workdir STUDENT``
    unless STUDENT has a checkpoint (``student.config_for`` + ``trainer.train`` where the CLI has no
    distill command)."""
    ckpt = os.path.join(student, "checkpoints")
    if os.path.isdir(ckpt) and os.listdir(ckpt):
        return
    config = os.path.join(ROOT, "configs", "distill_deediff.py")
    print(f"fine-tuning {base} into {student} (deediff) ...", flush=True)
    from diffjax.cli import table

    if "distill" in table.COMMANDS and os.path.isfile(os.path.join(ROOT, "diffjax", "cli",
                                                                   "distill.py")):
        import subprocess
        subprocess.run([sys.executable, "-m", "diffjax.cli", "distill", "--config", config,
                        "--teacher", base, "--workdir", student, *overrides], check=True, cwd=ROOT)
        return
    from diffjax.distill import student as student_lib
    from diffjax.training import config as config_lib, trainer
    trainer.train(student_lib.config_for(config_lib.sibling(config, "distill_deediff.py"), base),
                  student)


class CountingModel:
    """The run's module with ``apply`` reporting the blocks each call executed (the sown exit
    layer; the depth for a full call) to ``calls`` through a debug callback. Values unchanged."""

    def __init__(self, model, calls: list):
        self.model, self.calls = model, calls

    def apply(self, variables, *args, exit_threshold=None, **kw):
        if exit_threshold is None:
            out = self.model.apply(variables, *args, **kw)
            layers = jnp.int32(self.model.depth)
        else:
            out, st = self.model.apply(variables, *args, exit_threshold=exit_threshold,
                                       mutable=["intermediates"], **kw)
            layers = st["intermediates"]["exit_layer"][0]
        jax.debug.callback(lambda n, lab: self.calls.append((int(n), float(lab))), layers,
                           args[1][0])
        return out


def counting(run, calls):
    model = CountingModel(run.model, calls)
    return run._replace(den=step_lib.make_denoiser(run.config, model, run.process,
                                                   run.example_shape))


def fixed_exit(params, k: int, depth: int):
    """Confidence modules that exit at block k on every call of the early-exit path at any
    threshold in (0, 1): layers < k always 0, layer k always 1."""
    out = dict(params)
    for i in range(depth):
        lin = params[f"uem_{i}"]["linear"]
        b = -1e4 if i < k - 1 else 1e4
        out[f"uem_{i}"] = {"linear": {"kernel": jnp.zeros_like(lin["kernel"]),
                                      "bias": jnp.full_like(lin["bias"], b)}}
    return out


def wall_times(points, a) -> list[float]:
    """Median seconds of one draw of ``a.batch`` images for each (run, guidance) point: a warm-up
    draw each, then ``a.repeats`` rounds over all points in turn (the machine is shared: a change
    of load falls on every point of a round alike). No callback."""
    def draw(run, guidance):
        return inference.generate(run, a.batch, sampler=a.sampler, steps=a.steps,
                                  guidance=guidance, seed=1, batch_size=a.batch)

    for run, guidance in points:
        draw(run, guidance)
    times = [[] for _ in points]
    for _ in range(a.repeats):
        for i, (run, guidance) in enumerate(points):
            t0 = time.perf_counter()
            draw(run, guidance)
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def measure(name, run, guidance, base_workdir, a, depth, **info) -> dict:
    """Blocks per call, FD and accuracy of one point (its evaluation draw, with the callback)."""
    calls = []
    ev = evaluation.evaluate(counting(run, calls), base_workdir, num_samples=a.num,
                             sampler=a.sampler, steps=a.steps, guidance=guidance)
    jax.effects_barrier()
    layers = np.array([n for n, _ in calls], float)
    # exit layer per sampling step (sigma = exp(4 x the EDM noise label); mean over batches)
    per_sigma = {}
    for n, lab in calls:
        per_sigma.setdefault(round(float(np.exp(4 * lab)), 4), []).append(n)
    row = {"point": name, **info, "depth": depth, "layers": float(layers.mean()),
           "layer_fraction": float(layers.mean() / depth), "calls": int(len(layers)),
           "fd": ev["eval/fd"], "accuracy": ev.get("eval/accuracy"),
           "fd_real_floor": ev.get("eval/fd_real_floor"),
           "exit_layer_by_sigma": {str(s): float(np.mean(v)) for s, v in
                                   sorted(per_sigma.items(), reverse=True)}}
    print(json.dumps(row), flush=True)
    return row


def print_table(rows):
    """The table; speed-up against the student without exits (the same network), else the base."""
    ref = next((r for r in rows if r["point"] == "student"), rows[0])
    full = [r["seconds_per_draw"] for r in rows if r["layers"] == r["depth"]]
    print(f"\n{'point':<26} {'layers':>7} {'saved':>7} {'s/draw':>7} {'speed-up':>8} "
          f"{'FD':>8} {'acc':>6}")
    for r in rows:
        print(f"{r['point']:<26} {r['layers']:7.2f} {1 - r['layer_fraction']:7.1%} "
              f"{r['seconds_per_draw']:7.2f} {ref['seconds_per_draw'] / r['seconds_per_draw']:7.2f}x "
              f"{r['fd']:8.4f} {r['accuracy']:6.3f}")
    print(f"(speed-up against {ref['point']!r}; the full-network rows (same compute) took "
          f"{min(full):.2f}-{max(full):.2f} s: the timing noise of the shared machine. FD floor, "
          f"real vs real: {ref['fd_real_floor']:.4f}; {ref['depth']} blocks)")
    ee = [r for r in rows if r["point"].startswith("early_exit")]
    if ee:
        print("\nexit layer per sampling step (sigma: mean blocks run), early exit:")
        for r in ee:
            print(f"  thr {r['threshold']:<5g} " + "  ".join(
                f"{float(s):.3g}:{v:.1f}" for s, v in r["exit_layer_by_sigma"].items()))


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    groups = (("base", "base, full network (training steps)", "k", "s"),
              ("student", "deediff, no exit", "C1", "s"),
              ("early_exit", "deediff early exit", "C0", "o"), ("fixed", "fixed exit at block k",
                                                                 "C2", "^"))
    for ax, key, label in ((axes[0], "layers", "blocks executed per network call"),
                           (axes[1], "seconds_per_draw", "seconds per draw")):
        for prefix, name, color, marker in groups:
            pts = [r for r in rows if r["point"].startswith(prefix)]
            if not pts:
                continue
            pts.sort(key=lambda r: r["layers"])     # threshold / block order in both panels
            ax.plot([r[key] for r in pts], [r["fd"] for r in pts], marker=marker, color=color,
                    label=name, linestyle="none" if prefix in ("base", "student") else "-")
            for r in pts:
                tag = r.get("threshold", r.get("exit_block"))
                text = f"{tag:g}" if tag is not None else (
                    r["point"].replace("base", "").strip() or "1000 steps") if prefix == "base" \
                    else None
                if text:
                    ax.annotate(text, (r[key], r["fd"]), fontsize=7, textcoords="offset points",
                                xytext=(3, 3))
        ax.set_xlabel(label)
        ax.set_ylabel("FD (base run's classifier features)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("DeeDiff early exit, digits DiT (6 blocks), DPM-Solver++(2M) 10 steps, CFG 3")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir_root", default="/tmp/deediff_digits")
    ap.add_argument("--thresholds", type=float, nargs="+", default=list(THRESHOLDS))
    ap.add_argument("--fixed_exits", type=int, nargs="*", default=list(FIXED_EXITS))
    ap.add_argument("--num", type=int, default=500, help="samples per FD / accuracy")
    ap.add_argument("--batch", type=int, default=100, help="images per timed draw")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds (the median is kept)")
    ap.add_argument("--sampler", default="dpmpp_2m")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--scale", type=float, default=3.0, help="classifier-free guidance scale")
    ap.add_argument("--long_steps", type=int, default=1600,
                    help="steps of the longer-trained base control (0: none)")
    ap.add_argument("--json", default=os.path.join(ROOT, "docs", "deediff_digits.json"))
    ap.add_argument("--figure", default=os.path.join(ROOT, "docs", "deediff_digits.png"))
    ap.add_argument("--from_json", action="store_true", help="only print / plot --json's rows")
    a = ap.parse_args(argv)
    if a.from_json:
        with open(a.json, encoding="utf-8") as f:
            rows = json.load(f)["rows"]
        print_table(rows)
        plot(rows, a.figure)
        return
    base = os.path.join(a.workdir_root, "base")
    student = os.path.join(a.workdir_root, "deediff")
    ensure_trained(base, os.path.join(ROOT, "configs", "digits_dit.py"))
    ensure_student(student, base)
    base_run, st_run = inference.load(base), inference.load(student)
    depth = int(st_run.model.depth)
    cfg = {"name": "classifier_free", "scale": a.scale}
    points = [("base", base_run, cfg, {})]
    if a.long_steps:
        long = os.path.join(a.workdir_root, f"base_{a.long_steps}")
        ensure_trained(long, os.path.join(ROOT, "configs", "digits_dit.py"),
                       f"--config.total_steps={a.long_steps}", "--config.eval.at_end=false")
        points.append((f"base {a.long_steps} steps", inference.load(long), cfg, {}))
    points.append(("student", st_run, cfg, {}))
    for thr in a.thresholds:
        points.append((f"early_exit {thr:g}", st_run,
                       {"name": "early_exit", "threshold": thr, "scale": a.scale},
                       {"threshold": thr}))
    name = st_run.config.sample.params
    for k in a.fixed_exits:
        fixed = st_run._replace(params={name: fixed_exit(st_run.params[name], k, depth)})
        points.append((f"fixed exit {k}", fixed,
                       {"name": "early_exit", "threshold": 0.5, "scale": a.scale},
                       {"exit_block": k}))
    rows = [measure(n, run, g, base, a, depth, **info) for n, run, g, info in points]
    print(f"timing {len(points)} points x {a.repeats} rounds ...", flush=True)
    for row, sec in zip(rows, wall_times([(run, g) for _, run, g, _ in points], a)):
        row["seconds_per_draw"] = sec
    print_table(rows)
    with open(a.json, "w", encoding="utf-8") as f:
        json.dump({"settings": {k: v for k, v in vars(a).items() if k != "from_json"},
                   "base": base, "student": student, "rows": rows}, f, indent=1)
    print(f"wrote {a.json}")
    plot(rows, a.figure)


if __name__ == "__main__":
    main()
