"""Calibrated (SDM) verification with an adaptive best-of-N budget on digits: which samples a
search keeps, and whether those the calibrated verifier admits are truly of the class.

    python experiments/search_calibrated_digits.py --workdir /tmp/qs --clean /tmp/qs_clean
    python experiments/search_calibrated_digits.py --workdir /tmp/qs --clean /tmp/qs_clean --num 256

Both runs are trained (configs/digits.py, configs/digits_clean_classifier.py) if empty. The
default (64 samples, N in 1, 4, 16) takes about 4 minutes on two CPU cores; --num 256 about 12.

The 2-D toy (experiments/search_calibrated.py) on the Quickstart run, set up as
experiments/search_digits.py: the base model is drawn *unconditionally* (guidance scale 0) with
DPM-Solver++(2M), so only the search steers; the reward is the clean-image classifier (--clean,
configs/digits_clean_classifier.py); quality is judged by the *other* classifier, the run's
evaluation classifier (training/evaluation.py): its accuracy (argmax in the target set) and the
Frechet distance of its features to the real digits of the target class(es) (FD; the real-vs-real
floor is what a perfect sampler of the class gets). Tasks: one digit (class:K) and the even digits.

SDM (Schmaltz 2025, search/calibrated.py) is fitted on the clean classifier's features and logits
of the run's training digits, split with --seed into an SDM training part and a calibration part
(--cal-fraction). The clean classifier was itself trained on all of these digits: it predicts
almost every one of them correctly, so Similarity q counts long runs of correct neighbours, the
calibration distances are those of points it has memorised, and the region (q~_min, psi) is fitted
where the classifier is surer than on any new image: q, d and the admission are *optimistic*. The
run's held-out test digits (seen by neither classifier) are scored too, as a check of the region
on real images, and as the "real" row of each task (its FD is left out: few images).

Rows, per task: best-of-N over initial noises with the softmax verifier
(verifiers.from_spec(task, ...), the log-probability of the class set) and with the SDM verifier
(the log sdm mass of the set, Eq. 7), for N in --n (N = 1: no search, one row), and the adaptive
budget (n_min .. n_max: more candidates only while the kept one is not admitted as the target
with confidence >= alpha'). Columns: NFE per sample; ``reward``, the softmax log-probability of
the set (what softmax best-of-N maximises); ``d = 0``, the fraction of samples farther from the
SDM training digits (in the clean classifier's features) than the calibration sets allow, where
the sdm activation is uniform and the SDM score of every class set is its size over C, and
``dist.``, the median of that distance; ``admitted``, the fraction the calibrated verifier admits
as the target; the judge's accuracy overall, among the admitted and among the rejected;
FD; diversity (methods.diversity). NFE are each method's own count; samples of the same noise are
drawn once and shared between rows (the rows' candidates coincide where their noises do), which
saves time, not NFE.

Claims (Schmaltz 2025, Secs. 4-5): the admitted points are correct with probability >= alpha',
and SDM's estimate falls (rather than the softmax's staying high) for inputs far from the
training data; so SDM-selected and admitted samples should more often be truly of the class than
softmax-selected ones, and the adaptive budget should reach similar quality with fewer NFE.
Prints a table per task and writes WORKDIR/search_calibrated_digits.json.
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
from diffjax.guidance import other_runs  # noqa: E402
from diffjax.search import calibrated, methods, noise_search, verifiers  # noqa: E402
from diffjax.training import evaluation  # noqa: E402
from experiments.runs import ROOT, ensure_trained  # noqa: E402
from experiments.search_digits import target_classes  # noqa: E402

CHUNK = 256          # rows per compiled call of the classifiers and the sampler


def clean_classifier(workdir: str, run):
    """(features_fn, logits_fn, num_classes) of the clean-classifier run, loaded and checked as
    guidance/elucd.load_clean_classifier does; both take concrete (B, ...) batches of any size."""
    clf, name = other_runs.load("search", "clean", workdir, "", -1, run,
                                what="a classifier trained on clean data (the reward)",
                                config_file="configs/digits_clean_classifier.py")
    if getattr(clf.model, "takes_noise_level", True):
        raise ValueError(f"search: the run in {workdir!r} is a {type(clf.model).__name__}, which "
                         f"takes a noise level; the reward is a clean-image classifier "
                         f"(config.model.name 'classifier', configs/digits_clean_classifier.py)")
    other_runs.check_compatible("search", workdir, clf, run, "the clean classifier")
    model, params = clf.model, clf.params[name]
    feats = jax.jit(lambda p, x: model.apply({"params": p}, x, return_features=True))
    logits = jax.jit(lambda p, x: model.apply({"params": p}, x))
    return (_in_chunks(lambda x: feats(params, x)), _in_chunks(lambda x: logits(params, x)),
            int(clf.config.model.num_classes))


def _in_chunks(fn):
    """``fn`` over pieces of exactly CHUNK rows (the last padded): one compile for every batch
    size the adaptive rounds make."""
    def call(x):
        x = np.asarray(x, np.float32)
        out = []
        for s in range(0, len(x), CHUNK):
            part = x[s:s + CHUNK]
            pad = [(0, CHUNK - len(part))] + [(0, 0)] * (x.ndim - 1)
            out.append(np.asarray(fn(jnp.asarray(np.pad(part, pad))))[:len(part)])
        return jnp.asarray(np.concatenate(out))
    return call


class SharedGenerator:
    """A noise_search generator that draws each (noise, cond) row once and remembers it, in
    batches padded to 64, 128 or 256 rows (few compiles); ``runs`` counts the rows drawn."""

    def __init__(self, gen):
        self.gen, self.cache, self.per, self.runs = gen, {}, None, 0

    def __call__(self, noise, cond=None):
        noise = np.asarray(noise, np.float32)
        leaves = [np.asarray(v) for v in jax.tree.leaves(cond)]
        keys = [noise[i].tobytes() + b"".join(v[i].tobytes() for v in leaves)
                for i in range(len(noise))]
        todo = list({k: i for i, k in enumerate(keys) if k not in self.cache}.values())
        for s in range(0, len(todo), CHUNK):
            idx = np.asarray(todo[s:s + CHUNK])
            size = next(b for b in (64, 128, 256) if b >= len(idx))
            rows = np.concatenate([idx, np.full(size - len(idx), idx[0])])
            c = None if cond is None else jax.tree.map(lambda v: jnp.asarray(np.asarray(v)[rows]),
                                                       cond)
            x, self.per = self.gen(jnp.asarray(noise[rows]), c)
            for i, row in zip(idx, np.asarray(x)[:len(idx)]):
                self.cache[keys[i]] = row
            self.runs += len(idx)
        return jnp.asarray(np.stack([self.cache[k] for k in keys])), self.per


def heldout(config):
    """The data's test split (seen by neither classifier) when the run trains on 'train'."""
    from diffjax.data import registry as data_registry

    if config.data.get("split", None) != "train":
        return None
    data = config.data.copy_and_resolve_references()
    data.split = "test"
    src = data_registry.get_source(data)
    return np.asarray(src.x, np.float32), np.asarray(src.labels, np.int32)


def fit(features, logits, x, y, cal_fraction: float, alpha: float, seed: int):
    """SDM of the clean classifier on the training digits, split at random into train / cal."""
    order = np.random.default_rng(seed).permutation(len(x))
    n_cal = int(round(cal_fraction * len(x)))
    if not 0 < n_cal < len(x):
        raise ValueError(f"--cal-fraction {cal_fraction} leaves an empty SDM training or "
                         f"calibration set of the {len(x)} digits")
    parts = [order[n_cal:], order[:n_cal]]
    f, z = np.asarray(features(x)), np.asarray(logits(x))
    args = [a for idx in parts for a in (f[idx], y[idx], z[idx])]
    cal = calibrated.fit_sdm(*args, alpha=alpha)
    info = {"train": len(parts[0]), "calibration": n_cal, "alpha": alpha,
            "q_tilde_min": float(cal.q_tilde_min),
            "thresholds": [round(float(t), 4) for t in np.asarray(cal.thresholds)],
            "calibration_set": admission(cal, features, logits, x[parts[1]], y[parts[1]])}
    return cal, info


def admission(cal, features, logits, x, y):
    """The region on labelled images: admitted fraction, the clean classifier's accuracy overall
    and when admitted, and how far the images are from the SDM training digits."""
    e = calibrated.sdm_estimate(cal, features(x), logits(x))
    ok, adm = np.asarray(e.pred) == y, np.asarray(e.reliable)
    return {"n": len(y), "admitted": float(adm.mean()), "clean_accuracy": float(ok.mean()),
            "clean_accuracy_admitted": float(ok[adm].mean()) if adm.any() else None,
            "d_zero": float(np.mean(np.asarray(e.d) == 0)),
            "d_nearest_median": float(np.median(np.asarray(e.d_nearest)))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--clean", required=True, help="the clean-classifier run (the reward)")
    ap.add_argument("--tasks", nargs="+", default=["class:3", "even"])
    ap.add_argument("--n", type=int, nargs="+", default=[1, 4, 16],
                    help="best-of-N candidates per sample")
    ap.add_argument("--n-min", type=int, default=1)
    ap.add_argument("--n-max", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=0.95, help="alpha' of the SDM region")
    ap.add_argument("--cal-fraction", type=float, default=0.5,
                    help="share of the training digits that calibrates SDM")
    ap.add_argument("--num", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    t_start = time.time()
    ensure_trained(a.workdir, os.path.join(ROOT, "configs", "digits.py"))
    ensure_trained(a.clean, os.path.join(ROOT, "configs", "digits_clean_classifier.py"))
    run = inference.load(a.workdir)
    sig = timesteps.sigmas(run.process, a.steps, run.config.sample.spacing)
    D = inference.denoiser(run, 0.0, sigmas=sig)                 # the unconditional model
    gen = SharedGenerator(noise_search.ode_generator("dpmpp_2m", D, sig))
    features, logits, classes = clean_classifier(a.clean, run)
    judge = evaluation.get_classifier(a.workdir, run.config)
    x_real, y_real, _ = evaluation._data_arrays(run.config)
    cal, sdm_info = fit(features, logits, x_real, y_real, a.cal_fraction, a.alpha, a.seed)
    test = heldout(run.config)
    if test is not None:
        sdm_info["test"] = admission(cal, features, logits, *test)
    print("SDM:", json.dumps(sdm_info), flush=True)
    cond = methods._rep({"label": jnp.zeros((1,), jnp.int32)}, a.num)
    shape = (a.num,) + tuple(run.example_shape)
    key = jax.random.key(a.seed)
    rows = []
    for task in a.tasks:
        want = target_classes(task, classes)
        softmax_v = verifiers.from_spec(task, logits, classes)
        sdm_v = calibrated.calibrated_verifier(cal, features, logits, classes=want)
        real = judge.features(x_real[np.isin(y_real, want)])
        half = len(real) // 2
        floor = evaluation.frechet_distance(*evaluation.feature_stats(real[:half]),
                                            *evaluation.feature_stats(real[half:]))
        ref = evaluation.feature_stats(real)

        def row(method, n, x, nfe, t, fd=True):
            x = np.clip(np.asarray(x), -1, 1)
            adm = np.asarray(sdm_v.confidence(jnp.asarray(x))) >= a.alpha
            est = sdm_v.estimate(jnp.asarray(x))
            hit = np.isin(judge.logits(x).argmax(-1), want)
            r = {"task": task, "method": method, "n": n, "num": len(x),
                 "nfe_per_sample": None if nfe is None else nfe / len(x),
                 "reward": float(np.mean(np.asarray(softmax_v(jnp.asarray(x))))),
                 "admitted": float(adm.mean()), "d_zero": float(np.mean(np.asarray(est.d) == 0)),
                 "d_nearest_median": float(np.median(np.asarray(est.d_nearest))),
                 "accuracy": float(hit.mean()),
                 "accuracy_admitted": float(hit[adm].mean()) if adm.any() else None,
                 "accuracy_rejected": float(hit[~adm].mean()) if (~adm).any() else None,
                 "fd": evaluation.frechet_distance(*ref, *evaluation.feature_stats(
                     judge.features(x))) if fd else None,
                 "fd_floor": floor, "diversity": methods.diversity(x),
                 "seconds": round(time.time() - t, 1)}
            rows.append(r)
            print(json.dumps(r), flush=True)

        if test is not None:
            in_set = np.isin(test[1], want)
            row("real test digits", None, test[0][in_set], None, time.time(), fd=False)
        for n in a.n:
            for name, v in ([("no search", softmax_v)] if n == 1 else
                            [("bon softmax", softmax_v), ("bon sdm", sdm_v)]):
                t = time.time()
                out = noise_search.best_of_n(key, gen, v, shape=shape, n=n, cond=cond)
                row(name, n, out.x, out.nfe, t)
        t = time.time()
        out = calibrated.adaptive_best_of_n(key, gen, sdm_v, sdm_v.confidence, shape=shape,
                                            n_min=a.n_min, n_max=a.n_max, threshold=a.alpha,
                                            cond=cond)
        row("adaptive sdm", f"{a.n_min}..{a.n_max}", out.x, out.nfe, t)
    seconds = round(time.time() - t_start, 1)
    with open(os.path.join(a.workdir, "search_calibrated_digits.json"), "w",
              encoding="utf-8") as f:
        json.dump({"settings": vars(a), "sdm": sdm_info, "sampler_runs": gen.runs,
                   "seconds": seconds, "rows": rows}, f, indent=1)
    print_tables(rows, sdm_info)
    print(f"\n{gen.runs} sampler runs drawn ({gen.per} NFE each) in {seconds} s")


def print_tables(rows, sdm_info):
    fmt = lambda v, spec: "-" if v is None else format(v, spec)
    print(f"\nSDM: {sdm_info['train']} training / {sdm_info['calibration']} calibration digits, "
          f"alpha' = {sdm_info['alpha']}, q~_min = {sdm_info['q_tilde_min']:.3f}")
    for part, what in (("calibration_set", "calibration digits (in-sample)"),
                       ("test", "held-out test digits")):
        if part in sdm_info:
            s = sdm_info[part]
            print(f"{what} ({s['n']}): admitted {s['admitted']:.3f}, clean accuracy "
                  f"{s['clean_accuracy']:.3f}, among the admitted "
                  f"{fmt(s['clean_accuracy_admitted'], '.3f')}; d = 0 for {s['d_zero']:.3f}, "
                  f"median distance to the nearest SDM training digit {s['d_nearest_median']:.3f}")
    for task in dict.fromkeys(r["task"] for r in rows):
        sub = [r for r in rows if r["task"] == task]
        print(f"\n{task} (FD floor, real vs real: {sub[0]['fd_floor']:.4f}; "
              f"accuracy: the judge's)")
        print("| method | N | NFE/sample | reward | d = 0 | dist. | admitted | accuracy | "
              "acc. admitted | acc. rejected | FD | diversity |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in sub:
            print(f"| {r['method']} | {fmt(r['n'], '')} | {fmt(r['nfe_per_sample'], '.1f')} | "
                  f"{r['reward']:.3f} | {r['d_zero']:.3f} | {r['d_nearest_median']:.2f} | "
                  f"{r['admitted']:.3f} | {r['accuracy']:.3f} | "
                  f"{fmt(r['accuracy_admitted'], '.3f')} | {fmt(r['accuracy_rejected'], '.3f')} | "
                  f"{fmt(r['fd'], '.4f')} | {r['diversity']:.3f} |")


if __name__ == "__main__":
    main()
