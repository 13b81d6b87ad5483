"""Inverse problems on held-out digits with the Quickstart model as the prior: PSNR, SSIM and
measurement consistency ||A(x_hat) - y|| of steered diffusion (Nair et al. 2023) vs DPS (Chung et al.
2023) vs a no-prior baseline (project(0, y): A^+ y for inpainting and super-resolution), per
operator, at equal sampler steps.

    python experiments/inverse_problems.py --workdir /tmp/qs     # trains configs/digits.py if empty

Held-out: the digits 'test' split (the last 297 of scikit-learn's 1797; the run trains on 'train').
The model is class-conditional and is drawn unconditionally (its null label). DPS's zeta (the
library default) was picked on 20 training digits from {20, 50, 150}. Colorization is not run: the
digits are grey and the only trained model here is 1-channel (it is tested analytically in
tests/inverse/test_operators.py). SSIM: Wang et al. 2004, 11x11 Gaussian window (std 1.5), K1 =
0.01, K2 = 0.03, dynamic range L = 2 (data in [-1, 1]), 'valid' window positions, mean over the
map. PSNR = 10 log10(L^2 / MSE) per image, averaged. Writes WORKDIR/inverse_problems.json and .png.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

from diffjax import inference  # noqa: E402
from experiments.runs import ensure_trained  # noqa: E402
from diffjax.data.digits import load_digits  # noqa: E402
from diffjax.inverse import operators as ops  # noqa: E402
from diffjax.inverse import restore  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = {"inpaint_box": ("inpaint", {"mask": "box", "size": 0.5}),
         "inpaint_random": ("inpaint", {"mask": "random", "keep": 0.3, "seed": 0}),
         "sr_x4": ("sr", {"factor": 4}),
         "deblur": ("deblur", {"kernel_size": 7, "std": 2.0})}
# name -> (method, sampler, knobs, steps multiplier)
METHODS = {"none": ("none", None, {}, 1), "steer": ("steer", None, {}, 1),
           "steer_ddim_eta1": ("steer", "ddim", {"eta": 1.0}, 2), "dps": ("dps", None, {}, 1)}


def _gauss_window(size: int = 11, std: float = 1.5) -> np.ndarray:
    r = np.arange(size) - (size - 1) / 2
    g = np.exp(-0.5 * (r / std) ** 2)
    return g / g.sum()


def _filter(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of (N, H, W, C) by the 1-D window g on H and W."""
    k = len(g)
    h, w = img.shape[1] - k + 1, img.shape[2] - k + 1
    rows = sum(g[i] * img[:, i:i + h] for i in range(k))
    return sum(g[j] * rows[:, :, j:j + w] for j in range(k))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 2.0) -> np.ndarray:
    """SSIM per image (Wang et al. 2004, Eq. 13 with a Gaussian window), shape (N,)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    g = _gauss_window(min(11, a.shape[1], a.shape[2]) | 1)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ma, mb = _filter(a, g), _filter(b, g)
    va = _filter(a * a, g) - ma ** 2
    vb = _filter(b * b, g) - mb ** 2
    cov = _filter(a * b, g) - ma * mb
    s = ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2))
    return s.reshape(len(a), -1).mean(1)


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 2.0) -> np.ndarray:
    mse = ((np.asarray(a, np.float64) - b) ** 2).reshape(len(a), -1).mean(1)
    return 10 * np.log10(data_range ** 2 / np.maximum(mse, 1e-12))


def consistency(op, x_hat: np.ndarray, y: np.ndarray) -> np.ndarray:
    r = np.asarray(op.forward(np.asarray(x_hat, np.float32))) - y
    return np.linalg.norm(r.reshape(len(r), -1), axis=1)


def plot(examples: dict, rows: list, out: str):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: pip install -e '.[experiments]' for the figure)")
        return
    tasks = list(examples)
    cols = ["truth", "measurement"] + [m for m in METHODS]
    k = next(iter(examples.values()))["truth"].shape[0]
    fig, axes = plt.subplots(len(tasks), len(cols), figsize=(2.3 * len(cols), 0.95 * len(tasks)),
                             squeeze=False)
    for i, t in enumerate(tasks):
        for j, c in enumerate(cols):
            ax = axes[i, j]
            ims = examples[t].get(c)
            if ims is not None:
                ax.imshow(np.concatenate(list(ims[:k, ..., 0]), axis=1), cmap="gray", vmin=-1,
                          vmax=1)
            row = next((r for r in rows if r["task"] == t and r["method"] == c), None)
            title = c if i == 0 else ""
            if row:
                title += ("\n" if title else "") + f"{row['psnr']:.1f} dB"
            ax.set_title(title, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i, 0].set_ylabel(t, fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=130)
    print(f"wrote {out}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True, help="a trained digits run (trained here if empty)")
    ap.add_argument("--num", type=int, default=100, help="held-out test digits")
    ap.add_argument("--steps", type=int, default=18)
    ap.add_argument("--sampler", default="heun")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise_std", type=float, default=0.0, help="measurement noise std")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS))
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--out", default=None, help="output prefix (default WORKDIR/inverse_problems)")
    args = ap.parse_args(argv)
    ensure_trained(args.workdir, os.path.join(ROOT, "configs", "digits.py"))
    run = inference.load(args.workdir)
    x, _ = load_digits("test", run.example_shape[0])
    x = x[:args.num]
    out = args.out or os.path.join(args.workdir, "inverse_problems")
    rows, examples = [], {}
    print(f"{'task':<16}{'method':<18}{'PSNR':>7}{'SSIM':>7}{'||A(x)-y||':>12}{'sec':>7}")
    for t in args.tasks:
        name, opts = TASKS[t]
        op = ops.make(name, run.example_shape, **opts)
        y = restore.measure(op, x, args.noise_std, args.seed)
        shown = y[:6] if y.shape == x.shape else ops.baseline(op, y[:6], (6,) + x.shape[1:])
        ex = {"truth": x[:6], "measurement": np.clip(np.asarray(shown), -1, 1)}
        for m in args.methods:
            method, sampler, knobs, mult = METHODS[m]
            t0 = time.time()
            r = restore.restore(run, measurements=y, operator=op, method=method,
                                steps=args.steps * mult, sampler=sampler or args.sampler,
                                seed=args.seed, knobs=knobs)
            row = {"task": t, "operator": name, "options": opts, "method": m,
                   "sampler": "-" if method == "none" else (sampler or args.sampler),
                   "steps": 0 if method == "none" else args.steps * mult,
                   "strength": r.strength, "psnr": float(psnr(r.x, x).mean()),
                   "ssim": float(ssim(r.x, x).mean()),
                   "consistency": float(consistency(op, r.x, y).mean()),
                   "y_norm": float(np.linalg.norm(y.reshape(len(y), -1), axis=1).mean()),
                   "seconds": round(time.time() - t0, 1), "num": len(x),
                   "noise_std": args.noise_std}
            rows.append(row)
            ex[m] = r.x[:6]
            print(f"{t:<16}{m:<18}{row['psnr']:7.2f}{row['ssim']:7.3f}{row['consistency']:12.4f}"
                  f"{row['seconds']:7.1f}", flush=True)
        examples[t] = ex
    with open(out + ".json", "w", encoding="utf-8") as f:
        json.dump({"workdir": args.workdir, "checkpoint_step": run.step, "rows": rows}, f, indent=1)
    print(f"wrote {out}.json")
    plot(examples, rows, out + ".png")


if __name__ == "__main__":
    main()
