"""Few-step guided sampling: class accuracy, FD and NFE per sampler and number of steps.

    python experiments/few_step_guided.py --workdir /tmp/qs                 # trains it if empty
    python experiments/few_step_guided.py --workdir /tmp/qs --guidance 1 --steps 4 6 10
    python experiments/few_step_guided.py --workdir /tmp/qs --variants      # + lower_order_final=False

Trains the Quickstart model (``--config``, default configs/digits.py, through ``python -m
diffjax.cli train``) unless ``--workdir`` already holds checkpoints, then, for every sampler and
number of steps, draws ``--num`` guided samples on the run's Karras grid and scores them as
``diffjax evaluate`` does (diffjax/training/evaluation.py): class accuracy of the run's evaluation
classifier and the Frechet distance in its feature space against the first max(num, 1000) real
digits. Samples are drawn exactly as ``inference.generate`` draws them (example i uses
fold_in(key(seed), i), batches of config.sample.batch_size, output clipped to [-1, 1]), so with the
default seed 1234 a row equals ``diffjax evaluate --num NUM --sampler S --steps N --guidance G``.

Accuracy and FD rank the samples, not the solver: with few steps a solver can miss the ODE's
solution and still score well (on the Quickstart model at guidance 1 both metrics are better at 5
steps than at 20). So each row also reports ``ode_err``, the RMS distance (per pixel, data range
[-1, 1]) of its samples to the same samples solved with ``--reference`` steps of DPM-Solver++(2M)
(default 100; 0 turns it off): the solver's error against the guided probability-flow ODE.

NFE (network evaluations per sample, counting a guided evaluation once) is read from the sampler
itself: N for the one-evaluation-per-step samplers, 2N - 1 for Heun. ``--variants`` adds, for the
multistep solvers, the rows with ``lower_order_final=False`` (the order schedule diffjax used before,
which is diffusers' for DPM-Solver++(2M) and UniPC-2; see diffjax/core/samplers/dpm_solver.py).

``--diffusers-python PY`` (the python of a separate virtualenv with torch and diffusers; never
diffjax's own) also runs diffusers' schedulers at the same settings, on the same Karras grid, from
the same x_T, with the same guided network evaluations served from this process over a pipe:
EulerDiscreteScheduler, HeunDiscreteScheduler, DPMSolverMultistepScheduler (solver_order 2 and 3)
and UniPCMultistepScheduler (solver_order 2 and 3), all with prediction_type="sample" and their
defaults otherwise (lower_order_final=True, final_sigmas_type="zero", bh2), as rows
``diffusers:<sampler>``. (DDIM has no diffusers counterpart on a Karras grid; diffjax's DDIM with
eta = 0 is the Euler step.)

Prints a table and writes ``--out`` (default WORKDIR/few_step_guided.png: accuracy vs NFE, one line
per sampler; drawn with matplotlib when installed, else with PIL) and ``--json`` (default
WORKDIR/few_step_guided.json).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import guidance as guidance_lib
from diffjax import inference
from diffjax.core import denoisers, samplers, timesteps
from diffjax.training import evaluation

SAMPLERS = ["euler", "ddim", "heun", "dpmpp_2m", "dpmpp_3m", "unipc", "unipc_3"]
MULTISTEP = ("dpmpp_2m", "dpmpp_3m", "unipc", "unipc_3")
STEPS = [4, 5, 6, 8, 10, 15, 20]


def ensure_trained(workdir: str, config: str):
    """Train ``config`` into ``workdir`` unless it already has checkpoints."""
    ckpt = os.path.join(workdir, "checkpoints")
    if os.path.isdir(ckpt) and os.listdir(ckpt):
        return
    print(f"no checkpoints in {workdir}: training {config} (a few minutes) ...", flush=True)
    subprocess.run([sys.executable, "-m", "diffjax.cli", "train", "--config", config,
                    "--workdir", workdir], check=True)


def nfe_of(name: str, sigmas, process) -> int:
    """Network evaluations per sample of sampler ``name`` on the grid (a constant denoiser)."""
    out = samplers.sample(name, lambda x, s, c: jnp.zeros_like(x), sigmas,
                          keys=samplers.example_keys(jax.random.key(0), 1), shape=(1, 1),
                          process=process)
    return int(out.nfe)


def generate(run, name: str, steps: int, guidance: float, num: int, seed: int, **knobs):
    """``inference.generate`` with sampler knobs: (samples in [-1, 1], NFE per sample, labels)."""
    x = inference.generate(run, num, sampler=name, steps=int(steps), guidance=guidance, seed=seed,
                           knobs=knobs)
    sig = timesteps.sigmas(run.process, int(steps), run.config.sample.spacing)
    return x, nfe_of(name, sig, run.process), inference.default_labels(num, run.num_classes)


class Scorer:
    """Accuracy and FD as ``evaluation.evaluate`` computes them."""

    def __init__(self, run, workdir: str, num: int):
        self.clf = evaluation.get_classifier(workdir, run.config)
        x_real, _, _ = evaluation._data_arrays(run.config)
        n_ref = min(max(num, 1000), len(x_real))
        self.stats_real = evaluation.feature_stats(self.clf.features(x_real[:n_ref]))

    def __call__(self, x, labels):
        acc = float(np.mean(self.clf.logits(x).argmax(-1) == labels))
        fd = evaluation.frechet_distance(*self.stats_real,
                                         *evaluation.feature_stats(self.clf.features(x)))
        return acc, fd


# --- diffusers at the same settings (a peer interpreter; network evaluations served from here) ----
DIFFUSERS = {  # sampler -> (scheduler class, config, frame of the scheduler's sample)
    "euler": ("EulerDiscreteScheduler", {}, "ve"),
    "heun": ("HeunDiscreteScheduler", {}, "ve"),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"solver_order": 2}, "vp"),
    "dpmpp_3m": ("DPMSolverMultistepScheduler", {"solver_order": 3}, "vp"),
    "unipc": ("UniPCMultistepScheduler", {"solver_order": 2}, "vp"),
    "unipc_3": ("UniPCMultistepScheduler", {"solver_order": 3}, "vp"),
}

# Runs in the peer interpreter. Frames on the pipes: one JSON header line {dtype, shape}, raw bytes.
PEER_CODE = r"""
import json, sys
import numpy as np, torch, diffusers

fin, fout = sys.stdin.buffer, sys.stdout.buffer

def send(a):
    a = np.ascontiguousarray(a)
    fout.write((json.dumps({"dtype": a.dtype.str, "shape": list(a.shape)}) + "\n").encode())
    fout.write(a.tobytes()); fout.flush()

def recv():
    h = json.loads(fin.readline())
    n = int(np.prod(h["shape"], dtype=np.int64)) * np.dtype(h["dtype"]).itemsize
    return np.frombuffer(fin.read(n), h["dtype"]).reshape(h["shape"]).copy()

spec = json.loads(sys.argv[1])
grid = np.asarray(spec["grid"], np.float64)            # diffjax's grid, ending at 0
# A 1000-level training schedule spanning the grid (only needed to construct the scheduler).
lv = np.exp(np.linspace(np.log(grid[-2]), np.log(grid[0]), 1000))
ab = 1.0 / (1.0 + lv ** 2)
betas = 1.0 - np.concatenate([ab[:1], ab[1:] / ab[:-1]])
sch = getattr(diffusers, spec["cls"])(trained_betas=betas.tolist(), prediction_type="sample",
                                      use_karras_sigmas=True, **spec["config"])
sch.set_timesteps(len(grid) - 1)
if spec["cls"] == "HeunDiscreteScheduler":               # its layout: s0, s1, s1, ..., s_N-1, s_N-1, 0
    lay = np.concatenate([grid[:1], np.repeat(grid[1:-1], 2), grid[-1:]])
else:
    lay = grid
assert len(lay) == len(sch.sigmas), (len(lay), len(sch.sigmas))
sch.sigmas = torch.from_numpy(lay.astype(np.float32))    # exactly diffjax's levels
vp = spec["frame"] == "vp"
z = torch.from_numpy(recv())
s0 = float(sch.sigmas[0])
sample = s0 * z / (1 + s0 ** 2) ** 0.5 if vp else s0 * z
nfe = 0
for t in sch.timesteps:
    sch.scale_model_input(sample, t)                     # (the network input; not needed here)
    s = float(sch.sigmas[0 if sch.step_index is None else sch.step_index])
    x = sample * (1 + s ** 2) ** 0.5 if vp else sample
    send(x.float().numpy()); send(np.asarray([s, 0.0]))
    nfe += 1
    sample = sch.step(torch.from_numpy(recv()), t, sample, return_dict=False)[0]
send(sample.float().numpy()); send(np.asarray([nfe, 1.0]))
"""


def _write(f, a):
    a = np.ascontiguousarray(a)
    f.write((json.dumps({"dtype": a.dtype.str, "shape": list(a.shape)}) + "\n").encode())
    f.write(a.tobytes())
    f.flush()


def _read(f):
    line = f.readline()
    if not line:
        raise RuntimeError("the diffusers peer exited (see its error above)")
    h = json.loads(line)
    n = int(np.prod(h["shape"], dtype=np.int64)) * np.dtype(h["dtype"]).itemsize
    buf = f.read(n)
    return np.frombuffer(buf, h["dtype"]).reshape(h["shape"]).copy()


@functools.lru_cache(maxsize=None)
def _guided_fn(den, null_label: int, guided: bool):
    static = guidance_lib.split(guidance_lib.resolve(3.0 if guided else 1.0))[0]
    ctx = guidance_lib.Context(null_label=null_label)

    def fn(params, x, sigma, labels, guidance):
        D = guidance_lib.apply(denoisers.bind(den, params), static, {"scale": guidance}, ctx)
        return D(x, jnp.full((x.shape[0],), sigma, jnp.float32), {"label": labels})

    return jax.jit(fn)


def generate_diffusers(peer_python: str, run, name: str, steps: int, guidance: float, num: int,
                       seed: int):
    """diffusers' scheduler for ``name`` driven with this run's guided denoiser: (x, NFE, labels)."""
    cls, config, frame = DIFFUSERS[name]
    params = inference.pick_params(run.params, run.config.sample.params)
    batch = int(run.config.sample.get("batch_size", 100))
    labels = inference.default_labels(num, run.num_classes)
    keys = samplers.example_keys(jax.random.key(seed), num)
    z = np.asarray(samplers.prior_noise(keys, tuple(run.example_shape)))   # x_T = sigma_max z
    grid = np.asarray(timesteps.sigmas(run.process, steps, run.config.sample.spacing), np.float64)
    fn = _guided_fn(run.den, run.num_classes, guidance != 1)
    spec = json.dumps({"cls": cls, "config": config, "frame": frame, "grid": grid.tolist()})
    p = subprocess.Popen([peer_python, "-c", PEER_CODE, spec], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE)
    try:
        _write(p.stdin, z.astype(np.float32))
        while True:
            x, s = _read(p.stdout), _read(p.stdout)
            if s[1] == 1.0:
                return np.clip(x, -1.0, 1.0), int(s[0]), labels
            d = [np.asarray(fn(params, jnp.asarray(x[i:i + batch]), jnp.float32(s[0]),
                               jnp.asarray(labels[i:i + batch]), jnp.float32(guidance)))
                 for i in range(0, num, batch)]
            _write(p.stdin, np.concatenate(d).astype(np.float32))
    finally:
        p.stdin.close()
        p.wait()


# --- the figure ---------------------------------------------------------------------------------
COLORS = {"euler": "#1f77b4", "ddim": "#17becf", "heun": "#ff7f0e", "dpmpp_2m": "#2ca02c",
          "dpmpp_3m": "#d62728", "unipc": "#9467bd", "unipc_3": "#8c564b"}


def _series(rows):
    out = {}
    for r in rows:
        out.setdefault(r["label"], []).append((r["nfe"], r["accuracy"]))
    return {k: sorted(v) for k, v in out.items()}


def _color(label):
    """The sampler's colour; a variant row (``name knob=value``) gets it lightened."""
    c = COLORS.get(label.split(" ")[0].split(":")[-1], "#7f7f7f")
    if "=" not in label and ":" not in label:
        return c
    rgb = [int(c[i:i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{(v + 2 * 255) // 3:02x}" for v in rgb)


def plot(rows, path: str, title: str) -> str:
    series = _series(rows)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return _plot_pil(series, path, title)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for label, pts in series.items():
        ax.plot(*zip(*pts), marker="o", label=label, color=_color(label),
                linestyle=":" if ":" in label else "--" if "=" in label else "-")
    ax.set_xscale("log")
    ax.set_xlabel("NFE per sample")
    ax.set_ylabel("class accuracy")
    ax.set_ylim(0, 1.01)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _plot_pil(series, path, title):
    """The same plot with PIL only (matplotlib is not a diffjax dependency)."""
    import math

    from PIL import Image, ImageDraw
    W, H, L, R, T, B = 940, 540, 70, 270, 50, 60
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    nfes = [n for pts in series.values() for n, _ in pts]
    lo, hi = math.log(min(nfes) * 0.9), math.log(max(nfes) * 1.1)
    px = lambda n: L + (math.log(n) - lo) / (hi - lo) * (W - L - R)
    py = lambda a: T + (1.0 - a) * (H - T - B)
    d.rectangle([L, T, W - R, H - B], outline="black")
    for a in np.linspace(0, 1, 6):
        d.line([L, py(a), W - R, py(a)], fill="#dddddd")
        d.text((L - 35, py(a) - 6), f"{a:.1f}", fill="black")
    for n in (4, 5, 6, 8, 10, 15, 20, 30, 40):
        if min(nfes) * 0.9 <= n <= max(nfes) * 1.1:
            d.line([px(n), T, px(n), H - B], fill="#eeeeee")
            d.text((px(n) - 6, H - B + 6), str(n), fill="black")
    d.text((L + (W - L - R) // 2 - 60, H - 25), "NFE per sample (log)", fill="black")
    d.text((8, T - 18), "class accuracy", fill="black")
    d.text((L + 120, 10), title, fill="black")
    for k, (label, pts) in enumerate(series.items()):
        c = _color(label)
        xy = [(px(n), py(a)) for n, a in pts]
        if len(xy) > 1:
            d.line(xy, fill=c, width=1 if "=" in label else 2)
        for x, y in xy:
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=c)
        ly = T + 14 * k
        d.line([W - R + 10, ly + 6, W - R + 30, ly + 6], fill=c, width=2)
        d.text((W - R + 35, ly), label, fill="black")
    img.save(path)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "configs",
                                                     "digits.py"))
    ap.add_argument("--samplers", nargs="+", default=SAMPLERS)
    ap.add_argument("--steps", type=int, nargs="+", default=STEPS)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--num", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--reference", type=int, default=100,
                    help="steps of the dpmpp_2m reference solution for ode_err (0: none)")
    ap.add_argument("--variants", action="store_true",
                    help="also run the multistep solvers with lower_order_final=False")
    ap.add_argument("--diffusers-python", default=None,
                    help="python of a separate venv with torch + diffusers: add diffusers' rows")
    ap.add_argument("--diffusers-only", action="store_true",
                    help="with --diffusers-python: only diffusers' rows")
    ap.add_argument("--out", default=None, help="figure path (default WORKDIR/few_step_guided.png)")
    ap.add_argument("--json", default=None, help="rows as JSON (default WORKDIR/few_step_guided.json)")
    args = ap.parse_args()
    for s in args.samplers:
        samplers.get(s)
    ensure_trained(args.workdir, args.config)
    run = inference.load(args.workdir)
    if not run.num_classes:
        raise SystemExit(f"{args.workdir} is not a class-conditional run: no class accuracy")
    score = Scorer(run, args.workdir, args.num)
    jobs = [] if args.diffusers_only else [(s, {}) for s in args.samplers]
    if args.variants and not args.diffusers_only:
        jobs += [(s, {"lower_order_final": 0.0}) for s in args.samplers if s in MULTISTEP]
    if args.diffusers_python:
        jobs += [("diffusers:" + s, {}) for s in args.samplers if s in DIFFUSERS]
    x_ref = None
    if args.reference:
        x_ref = generate(run, "dpmpp_2m", args.reference, args.guidance, args.num, args.seed)[0]
    rows = []
    print(f"{'sampler':<34}{'steps':>6}{'NFE':>5}{'accuracy':>10}{'FD':>10}{'ode_err':>9}{'sec':>7}",
          flush=True)
    for steps in args.steps:
        for name, knobs in jobs:
            t0 = time.time()
            if name.startswith("diffusers:"):
                x, nfe, labels = generate_diffusers(args.diffusers_python, run, name.split(":")[1],
                                                    steps, args.guidance, args.num, args.seed)
            else:
                x, nfe, labels = generate(run, name, steps, args.guidance, args.num, args.seed,
                                          **knobs)
            acc, fd = score(x, labels)
            err = float(np.sqrt(np.mean((x - x_ref) ** 2))) if x_ref is not None else float("nan")
            label = name + "".join(f" {k}={'False' if v == 0 else v}" for k, v in knobs.items())
            rows.append(dict(label=label, sampler=name, knobs=knobs, steps=steps, nfe=nfe,
                             guidance=args.guidance, accuracy=acc, fd=fd, ode_err=err,
                             seconds=round(time.time() - t0, 1)))
            print(f"{label:<34}{steps:>6}{nfe:>5}{acc:>10.3f}{fd:>10.4f}{err:>9.4f}"
                  f"{time.time() - t0:>7.1f}", flush=True)
    print("\naccuracy (NFE) at guidance", args.guidance)
    labels = list(dict.fromkeys(r["label"] for r in rows))
    print(f"{'sampler':<34}" + "".join(f"{s:>12}" for s in args.steps))
    for lab in labels:
        cells = {r["steps"]: r for r in rows if r["label"] == lab}
        print(f"{lab:<34}" + "".join(f"{cells[s]['accuracy']:>7.3f}({cells[s]['nfe']:>2})"
                                     for s in args.steps))
    out = args.out or os.path.join(args.workdir, "few_step_guided.png")
    path = plot(rows, out, f"{os.path.basename(os.path.normpath(args.workdir))}: guidance "
                           f"{args.guidance:g}, {args.num} samples, seed {args.seed}")
    js = args.json or os.path.join(args.workdir, "few_step_guided.json")
    with open(js, "w", encoding="utf-8") as f:
        json.dump({"rows": rows, "checkpoint_step": run.step, "workdir": args.workdir,
                   "reference_steps": args.reference}, f, indent=1)
    print(f"figure: {path}\nrows: {js}")


if __name__ == "__main__":
    main()
