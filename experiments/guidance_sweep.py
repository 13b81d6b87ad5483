"""Guidance methods on the Quickstart model: class accuracy, Frechet distance and diversity over a
sweep of scales, at equal network evaluations (every method here makes 2 network calls per step).

    python experiments/guidance_sweep.py --workdir /tmp/qs --weak /tmp/qs_weak    # trains both if empty
    python experiments/guidance_sweep.py --data shapes16 --workdir /tmp/sh --weak /tmp/sh_weak \
        --clean /tmp/sh_clean --ppap /tmp/sh_ppap       # the same on 16x16 shapes (24 classes)

Claims checked (direction only, at this scale):
- classifier-free guidance (Ho & Salimans 2022): accuracy rises with the scale, diversity falls;
- autoguidance (Karras et al. 2024): a weaker run of the same model as the guide improves the
  Frechet distance over the unguided model without the diversity loss of classifier-free guidance;
- guidance interval (Kynkaanniemi et al. 2024): guiding only at middle noise levels keeps most of
  the accuracy gain with a better Frechet distance at high scales;
- rescale (Lin et al. 2024): limits the over-saturation of large scales.
- classifier guidance (Dhariwal & Nichol 2021) with a noise-conditioned classifier
  (configs/digits_noisy_classifier.py, --classifier DIR): accuracy rises with the scale.
- EluCD (Ma et al. 2024) with an off-the-shelf classifier trained on clean digits only
  (configs/digits_clean_classifier.py, --clean DIR): improves on unguided sampling and approaches
  the trained noisy classifier (elucd: their DDPM path, on x0; elucd_noisy: their EDM path with
  its defaults beta 5, tau2 0);
- GFCG (Shenoy et al. 2024, experimental reconstruction), the same clean classifier, alone and on
  top of classifier-free guidance and autoguidance (gfcg, gfcg_cfg, gfcg_auto): a trade-off at or
  beyond classifier-free guidance's;
- PPAP (Go et al. 2023): experts LoRA-tuned from the clean classifier, data-free (--ppap DIR;
  trained here from 2000 unconditional samples when empty).
``calls`` is the number of diffusion-network evaluations per denoiser call (a classifier's forward
and backward passes come on top).
Spread = mean over classes of the trace of the samples' feature covariance (the evaluation
classifier's penultimate features) divided by the same for real digits of that class. It falls as
samples collapse toward one image per class; it is far above 1 for an undertrained model, whose
off-manifold samples spread the features more than real digits do, so read it as relative between
methods, not as diversity against the data. Writes WORKDIR/guidance_sweep.png and .json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

from diffjax import inference  # noqa: E402
from experiments.runs import ensure_trained  # noqa: E402
from diffjax.training import evaluation  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCALES = [1.0, 1.5, 2.0, 3.0, 4.0]


CALLS = {"classifier": 1, "elucd": 1, "elucd_noisy": 1, "ppap": 1, "gfcg": 2, "gfcg_cfg": 3, "gfcg_auto": 3}


def ensure_ppap(workdir: str, main: str, clean: str, data: str, num: int = 2000):
    """Data-free PPAP experts: unconditional samples of the main run, then the ppap objective."""
    ckpt = os.path.join(workdir, "checkpoints")
    if os.path.isdir(ckpt) and os.listdir(ckpt):
        return
    os.makedirs(workdir, exist_ok=True)
    gen = os.path.join(workdir, "generated.npz")
    cli = [sys.executable, "-m", "diffjax.cli"]
    if not os.path.exists(gen):
        subprocess.run(cli + ["sample", "--workdir", main, "--guidance", "0", "--num", str(num),
                              "--npz", gen, "--out", os.path.join(workdir, "generated.png")],
                       check=True, cwd=ROOT)
    ensure_trained(workdir, os.path.join(ROOT, "configs", "digits_ppap.py") + ":" + data,
                   f"--config.objective.teacher_workdir={clean}", f"--config.data.path={gen}")


def diversity(feats: np.ndarray, labels: np.ndarray, real_feats: np.ndarray,
              real_labels: np.ndarray) -> float:
    ratios = []
    for k in np.unique(labels):
        g, r = feats[labels == k], real_feats[real_labels == k]
        if len(g) > 2 and len(r) > 2:
            ratios.append(np.trace(np.cov(g, rowvar=False)) / np.trace(np.cov(r, rowvar=False)))
    return float(np.mean(ratios))


def plot(rows: list, out: str):
    """Accuracy vs FD and spread vs scale, one line per method (needs the 'experiments' extra)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: pip install -e '.[experiments]' for the figure)")
        return
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for name in methods:
        cells = [r for r in rows if r["method"] == name]
        spread = [r.get("spread", r.get("diversity")) for r in cells]
        ax[0].plot([r["fd"] for r in cells], [r["accuracy"] for r in cells], "o-", label=name)
        ax[1].plot([r["scale"] for r in cells], spread, "o-", label=name)
    ax[0].set_xscale("log")
    ax[0].set_xlabel("Frechet distance (lower is better)")
    ax[0].set_ylabel("class accuracy")
    ax[1].set_xlabel("guidance scale")
    ax[1].set_ylabel("feature spread / real data's")
    ax[1].set_yscale("log")
    ax[0].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print("figure:", out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--data", default="digits", choices=["digits", "shapes16"],
                    help="configs/DATA.py trains the main run (and picks the weak, clean and "
                         "PPAP configs' data)")
    ap.add_argument("--weak", required=True, help="the weak run for autoguidance")
    ap.add_argument("--scales", type=float, nargs="+", default=SCALES)
    ap.add_argument("--classifier", default=None, help="a noisy-classifier run (classifier rows)")
    ap.add_argument("--classifier-scales", type=float, nargs="+", default=[0.0, 2.0, 5.0, 10.0,
                                                                           20.0])
    ap.add_argument("--clean", default=None, help="a clean-classifier run (elucd and gfcg rows; "
                    "trained with configs/digits_clean_classifier.py when empty)")
    ap.add_argument("--ppap", default=None, help="a PPAP experts run (ppap rows; trained from the "
                    "--clean classifier when empty)")
    ap.add_argument("--methods", nargs="+", default=None, help="a subset of the methods")
    ap.add_argument("--num", type=int, default=500)
    ap.add_argument("--sampler", default="dpmpp_2m")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--from-json", nargs="+", default=None,
                    help="only draw the figure (WORKDIR/guidance_sweep.png) from rows this script "
                         "wrote")
    args = ap.parse_args(argv)
    if args.from_json:
        rows = []
        for path in args.from_json:
            with open(path, encoding="utf-8") as f:
                rows += json.load(f)
        plot(rows, os.path.join(args.workdir, "guidance_sweep.png"))
        return
    cfg = lambda name: os.path.join(ROOT, "configs", name)
    ensure_trained(args.workdir, cfg(f"{args.data}.py"))
    ensure_trained(args.weak, cfg("digits_weak.py") + ":" + args.data)
    run = inference.load(args.workdir)
    clf = evaluation.get_classifier(args.workdir, run.config)
    x_real, y_real, _ = evaluation._data_arrays(run.config)
    n_ref = min(max(args.num, 1000), len(x_real))
    real_feats = np.asarray(clf.features(x_real[:n_ref]))
    stats_real = evaluation.feature_stats(real_feats)
    methods = {
        "classifier_free": lambda w: {"name": "classifier_free", "scale": w},
        "auto": lambda w: {"name": "auto", "scale": w, "weak_workdir": args.weak},
        "interval": lambda w: {"name": "interval", "scale": w, "sigma_lo": 0.2, "sigma_hi": 5.0},
        "rescale": lambda w: {"name": "rescale", "scale": w, "phi": 0.7},
    }
    scales = {name: args.scales for name in methods}
    if args.classifier:
        methods["classifier"] = lambda w: {"name": "classifier", "scale": w,
                                           "classifier_workdir": args.classifier}
        scales["classifier"] = args.classifier_scales
    if args.clean:
        ensure_trained(args.clean, cfg("digits_clean_classifier.py") + ":" + args.data)
        clean = {"classifier_workdir": args.clean}
        methods["elucd"] = lambda w: {"name": "elucd", "scale": w, **clean}
        methods["elucd_noisy"] = lambda w: {"name": "elucd", "scale": w, "path": "noisy",
                                            "smooth_beta": 5.0, "tau2": 0.0, **clean}
        methods["gfcg"] = lambda w: {"name": "gfcg", "scale": w, **clean}
        methods["gfcg_cfg"] = lambda w: {"name": "gfcg", "scale": w, "base": "cfg",
                                         "base_scale": 2.0, **clean}
        methods["gfcg_auto"] = lambda w: {"name": "gfcg", "scale": w, "base": "auto",
                                          "base_scale": 2.0, "weak_workdir": args.weak, **clean}
        scales.update(elucd=[0.0, 0.3, 1.0, 2.0, 4.0], elucd_noisy=[0.03, 0.1, 0.3, 1.0], gfcg=[0.0, 1.0, 2.0, 4.0, 8.0],
                      gfcg_cfg=[0.0, 1.0, 2.0, 4.0], gfcg_auto=[0.0, 1.0, 2.0, 4.0])
    if args.ppap:
        if not args.clean:
            ap.error("--ppap needs --clean (the classifier its experts start from)")
        ensure_ppap(args.ppap, args.workdir, args.clean, args.data)
        methods["ppap"] = lambda w: {"name": "ppap", "scale": w, "experts_workdir": args.ppap}
        scales["ppap"] = [0.0, 1.0, 2.0, 4.0, 8.0]
    if args.methods:
        methods = {k: v for k, v in methods.items() if k in args.methods}
    labels = inference.default_labels(args.num, run.num_classes)
    rows = []
    for name, section in methods.items():
        for w in scales[name]:
            x = inference.generate(run, args.num, sampler=args.sampler, steps=args.steps,
                                   guidance=section(w), seed=args.seed)
            feats = np.asarray(clf.features(x))
            row = dict(method=name, scale=w,
                       accuracy=float(np.mean(np.asarray(clf.logits(x)).argmax(-1) == labels)),
                       fd=evaluation.frechet_distance(*stats_real,
                                                      *evaluation.feature_stats(feats)),
                       spread=diversity(feats, labels, real_feats, np.asarray(y_real[:n_ref])))
            row["calls"] = CALLS.get(name, 2)
            rows.append(row)
            print(f"{name:<16} w={w:<4g} calls {row['calls']} accuracy {row['accuracy']:6.1%}  FD {row['fd']:.5f}  "
                  f"spread {row['spread']:.2f}", flush=True)
    print(f"\n{'method':<16} scale: accuracy / FD / spread")
    for name in methods:
        cells = [r for r in rows if r["method"] == name]
        print(f"{name:<16}" + "  ".join(f"{r['scale']:g}: {r['accuracy']:.1%} / {r['fd']:.4f} / "
                                        f"{r['spread']:.1f}" for r in cells))
    tag = "_".join(args.methods) if args.methods else "all"
    with open(os.path.join(args.workdir, f"guidance_sweep_{tag}.json"), "w",
              encoding="utf-8") as f:
        json.dump(rows, f, indent=1)
    plot(rows, os.path.join(args.workdir, f"guidance_sweep_{tag}.png"))


if __name__ == "__main__":
    main()
