"""Sample quality: Frechet distance in a small classifier's feature space, and class accuracy.

A clean classifier (models/classifier.py, preset ``config.eval.classifier``) is trained once on the
training data (10% held out to report its own accuracy) and cached in ``workdir/classifier/``; it is
retrained only if the data or classifier config changes. Its inputs are resized (antialiased) to
``config.eval.classifier_resolution`` when that is set (digits: 8, their native size), which makes it
several times cheaper to train and to run. For generated samples x_g and real data x_r:
    FD = |mu_r - mu_g|^2 + tr(S_r) + tr(S_g) - 2 tr((S_r^1/2 S_g S_r^1/2)^1/2)
on the classifier's penultimate features (the Frechet / FID distance of Heusel et al. 2017, with
this small network in place of Inception; ``fd_real_floor`` is the same distance for as many real
examples outside the reference set, the value a perfect sampler would get), and
    accuracy = mean[argmax classifier(x_g) == the label x_g was generated for]
for class-conditional samples drawn with classifier-free guidance. Two-dimensional data (toy2d)
is compared on raw coordinates and has no classifier. The matrix square root uses symmetric
eigendecompositions, so the trace term is exact up to float64 round-off.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from diffjax import inference
from diffjax.metrics.fid import feature_stats, frechet_distance


# --- the evaluation classifier --------------------------------------------------------------------
def _augment(key, x):
    """Small Gaussian pixel noise (std 0.05): robustness to the residual noise of samples."""
    return x + 0.05 * jax.random.normal(key, x.shape)


def train_classifier(model, x: np.ndarray, y: np.ndarray, *, steps: int, batch_size: int = 128,
                     lr: float = 2e-3, seed: int = 0) -> Any:
    """Adam + cosine schedule on cross-entropy; returns params. ``x`` is at the classifier's size."""
    key = jax.random.key(seed)
    x = np.asarray(x, np.float32)
    params = model.init(key, jnp.zeros((1,) + x.shape[1:]))["params"]
    tx = optax.adam(optax.cosine_decay_schedule(lr, steps))
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, xb, yb, key):
        def loss_fn(p):
            logits = model.apply({"params": p}, _augment(key, xb), train=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
        loss, g = jax.value_and_grad(loss_fn)(params)
        u, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, u), opt, loss

    rng = np.random.default_rng(seed)
    for i in range(steps):
        idx = rng.integers(0, len(x), batch_size)
        params, opt, _ = step(params, opt, x[idx], y[idx], jax.random.fold_in(key, i))
    return params


def _batched(fn, x, batch_size=500):
    return np.concatenate([np.asarray(fn(x[i:i + batch_size])) for i in range(0, len(x), batch_size)])


def resize(x, resolution: int | None):
    """Antialiased resize of NHWC images to resolution x resolution (None: unchanged)."""
    if not resolution or x.shape[1:3] == (resolution, resolution):
        return x
    return jax.image.resize(x, (x.shape[0], resolution, resolution, x.shape[-1]), "linear",
                            antialias=True)


class EvalClassifier:
    """A trained classifier with ``logits(x)`` and ``features(x)`` on numpy batches."""

    def __init__(self, model, params, info: dict, resolution: int | None = None):
        self.model, self.params, self.info = model, params, info
        self._logits = jax.jit(lambda p, x: model.apply({"params": p}, resize(x, resolution)))
        self._feats = jax.jit(lambda p, x: model.apply({"params": p}, resize(x, resolution),
                                                       return_features=True))

    def logits(self, x):
        return _batched(lambda b: self._logits(self.params, b), np.asarray(x, np.float32))

    def features(self, x):
        return _batched(lambda b: self._feats(self.params, b), np.asarray(x, np.float32))


def _data_arrays(config, limit: int | None = None):
    from diffjax.data import registry as data_registry
    from diffjax.data.arrays import source_arrays
    from diffjax.latent.cache import image_data

    # a latent run's samples are decoded: compare them with the images behind its latents
    src = data_registry.get_source(image_data(config))
    x, y = source_arrays(src, limit)
    return x, y, int(src.num_classes)


def get_classifier(workdir: str, config) -> EvalClassifier:
    """Load the cached evaluation classifier of ``workdir`` or train and cache it."""
    from diffjax.models import registry

    ccfg = registry.get_preset(config.eval.classifier).to_dict()
    x, y, num_classes = _data_arrays(config)
    res = config.eval.get("classifier_resolution", None)
    x = np.asarray(jax.device_get(jax.jit(lambda a: resize(a, res))(x)))
    ccfg["num_classes"] = num_classes
    model = registry.build_model(ccfg)
    key_info = {"data": config.data.to_dict(), "classifier": {k: str(v) for k, v in ccfg.items()},
                "steps": int(config.eval.classifier_steps), "resolution": res}
    cache = os.path.join(workdir, "classifier")
    meta_path, params_path = os.path.join(cache, "info.json"), os.path.join(cache, "params.msgpack")
    if os.path.exists(meta_path) and os.path.exists(params_path):
        with open(meta_path, encoding="utf-8") as f:
            info = json.load(f)
        if info.get("key") == json.loads(json.dumps(key_info)):
            template = model.init(jax.random.key(0), jnp.zeros((1,) + x.shape[1:]))["params"]
            with open(params_path, "rb") as f:
                params = serialization.from_bytes(template, f.read())
            return EvalClassifier(model, params, info, res)
    t0 = time.time()
    perm = np.random.default_rng(0).permutation(len(x))
    n_hold = max(len(x) // 10, 1)
    hold, train = perm[:n_hold], perm[n_hold:]
    params = train_classifier(model, x[train], y[train], steps=int(config.eval.classifier_steps),
                              seed=config.seed)
    clf = EvalClassifier(model, params, {})          # x is already at the classifier's size
    acc = float(np.mean(clf.logits(x[hold]).argmax(-1) == y[hold]))
    clf = EvalClassifier(model, params, {}, res)
    info = {"key": key_info, "heldout_accuracy": acc, "num_train": int(len(train)),
            "num_heldout": int(n_hold), "train_seconds": time.time() - t0}
    logging.info("evaluation classifier: held-out accuracy %.4f (%d examples), trained in %.1fs",
                 acc, n_hold, info["train_seconds"])
    if jax.process_index() == 0:
        os.makedirs(cache, exist_ok=True)
        with open(params_path, "wb") as f:
            f.write(serialization.to_bytes(jax.device_get(params)))
        with open(meta_path, "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2)
    clf.info = info
    return clf


def evaluate(run: inference.Run, workdir: str, *, num_samples: int | None = None,
             sampler: str | None = None, steps: int | None = None, guidance=None,
             seed: int | None = None, params_name: str | None = None,
             spacing: str | None = None) -> dict:
    """FD (and class accuracy for conditional models) of ``num_samples`` fresh samples.

    Each setting left None takes the run's ``config.eval`` default (spacing and parameter set:
    ``config.sample``'s; seed: ``inference.DEFAULT_SEED['eval']``); a value given is used as given
    (``num_samples=0`` is an error, not the default); ``guidance`` is a section, a number
    (classifier-free scale) or a method name. ``inference.settings(run, 'eval', ...)`` returns
    the values used."""
    st = inference.settings(run, "eval", num=num_samples, sampler=sampler, steps=steps,
                           guidance=guidance, seed=seed, params=params_name, spacing=spacing)
    num, steps = st["num"], st["steps"]
    guidance = st["guidance"]
    t0 = time.time()
    x_gen = inference.generate(run, num, sampler=st["sampler"], steps=steps, guidance=guidance,
                              seed=st["seed"], params_name=st["params"], spacing=st["spacing"])
    t_sample = time.time() - t0
    out = {"eval/num_samples": num, "eval/guidance": float(guidance.get("scale", 1.0)),
           "eval/steps": steps,
           "eval/sample_seconds": t_sample}
    if x_gen.ndim == 2:  # 2-D points: compare coordinates directly
        x_real, _, _ = _data_arrays(run.config)
        out["eval/fd"] = frechet_distance(*feature_stats(x_real), *feature_stats(x_gen))
        return out
    clf = get_classifier(workdir, run.config)
    x_real, _, _ = _data_arrays(run.config)
    n_ref = min(max(num, 1000), len(x_real))
    stats_real = feature_stats(clf.features(x_real[:n_ref]))
    out["eval/fd"] = frechet_distance(*stats_real, *feature_stats(clf.features(x_gen)))
    held = x_real[n_ref:n_ref + num]
    if len(held) >= 50:  # the floor: the same distance for real examples outside the reference set
        out["eval/fd_real_floor"] = frechet_distance(*stats_real,
                                                     *feature_stats(clf.features(held)))
    out["eval/classifier_heldout_accuracy"] = clf.info.get("heldout_accuracy", float("nan"))
    if run.num_classes:
        labels = inference.default_labels(num, run.num_classes)
        out["eval/accuracy"] = float(np.mean(clf.logits(x_gen).argmax(-1) == labels))
    out["eval/seconds"] = time.time() - t0
    return out
