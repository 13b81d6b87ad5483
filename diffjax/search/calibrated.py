"""A calibrated verifier after SDM (Schmaltz 2025, "Similarity-Distance-Magnitude Universal
Verification", arXiv:2502.20167, Secs. 4.1-4.2; equation numbers are the paper's) and a best-of-N
that spends more candidates only on the examples whose chosen candidate it cannot verify.

A classifier gives an input final-layer features h (F,) and logits z (C,); y^ = argmax z. Given a
training set D_tr (features, labels y_tr, predictions y^_tr) and a labelled calibration set D_ca:

  Similarity (Eq. 5): q = how many consecutive nearest training points (L2 in feature space,
    nearest first, ties by index) are correctly predicted (y^_tr = y_tr) and predicted as y^; the
    count stops at the first that is not; capped at ``max_q`` (the official code looks up 1000).
  Distance (Eq. 6): d = min_c [1 - eCDF^c(d_nearest)], d_nearest = the distance to the nearest
    training point, eCDF^c over the d_nearest of the calibration points of true class c with
    q > 0, eCDF(x) = #{values < x} / n (a class without such points gives d = 0). Farther than
    every calibration point, d = 0. (Only ranks of distances enter: squared L2 gives the same d.)
  sdm activation (Eq. 7): sdm(z)_i = (2 + q)^(d z_i) / sum_c (2 + q)^(d z_c)
    = softmax(d ln(2 + q) z)_i: uniform at d = 0, the softmax at q = e - 2, d = 1; argmax = y^.

Calibration, with alpha' in (max(1/2, 1/C), 1):
  v_c = eCDF^c(sdm(z)_c) over the sdm(z)_y of the calibration points of true class y = c, and 1
    at or above their maximum (Eq. 9);  q~ = ln((2 + q)^(v_y^)) (Eq. 10);
  o = softmax(ln(2 + q~) v W) (Eq. 11), the C x C W fitted on D_ca by minimising the mean of
    -log_(2+q~) o_y (Eq. 21); a rescaling that moves argmax o off y^ sets q~ = 0 (out of
    distribution);
  effective sample sizes (Eqs. 12-15): n_c = #{calibration points of class c with a q~ below this
    one} (at most |D_ca^c| - 1), eps_c = sqrt(ln(2 / (1 - alpha')) / (2 n_c)) (1 when n_c = 0),
    v_lower = clip(v - eps on y^, v + eps elsewhere, 0, 1); q~_lower, o_lower from it (Eqs. 16, 18);
  the high-reliability region (Alg. 3): among the calibration points with floor(q~) >= 1 whose o
    keeps y^, q~_min = the smallest of their q~ such that for every class c the (1 - alpha')
    quantile psi_c (sorted o_c at index floor((1 - alpha') n)) of o_c over those of true class c
    with q~ >= q~_min is >= alpha' (no such q~: nothing is admitted, and fit_sdm warns);
  admitted ("reliable", Eq. 28 with J = 1: q~^gamma_min = q~_min, offsets m = 0) iff
    floor(q~_lower) >= 1, q~_lower >= q~_min and {c : o_lower_c >= psi_c} = {y^}; ``confidence``
    is then o_lower_y^, the paper's p^(y | x)_lower, and 0 for a rejected point (its bottom).

Where this departs from the official code (github.com/ReexpressAI/sdm, research_code/code/
sdm_model.py): the classifier's own features and logits stand in for the exemplar adaptor (its
training, Eq. 8, and Alg. 1's J repetitions with their Cauchy offsets, Eqs. 22-27, are not run);
W starts at the identity and takes ``rescaler_steps`` full-batch Adam steps keeping the lowest
loss (the loss is convex in W; the official code starts at random and runs batch-1 epochs); d = 0
always sets q to 0 for q~ (the official code does so when its argmax of the uniform output is
not y^, i.e. for every y^ but class 0).

    cal = fit_sdm(f_tr, y_tr, z_tr, f_ca, y_ca, z_ca, alpha=0.95)
    probs, q, d, reliable, confidence = sdm_scores(cal, f, z)
    v = calibrated_verifier(cal, features_fn, logits_fn, classes=[7])  # v(x0, cond), v.confidence
    out = adaptive_best_of_n(key, gen, v, v.confidence, shape=.., n_min=4, n_max=32, threshold=0.9)

adaptive_best_of_n: n_min candidates for every example, the best kept (exactly best_of_n's draw);
then, in rounds, each example whose chosen candidate has confidence < threshold gets as many new
candidates as it already had (so 2 n_min, 4 n_min, ... in all, at most n_max), keeping a new one
only if it scores strictly higher. NFE = nfe(G) (B n_min + sum over rounds of the unconfident
examples times the round's new candidates); candidate j >= n_min of example i has the noise
normal(fold_in(fold_in(fold_in(key, 1), i), j)), whichever other examples are unconfident. The
generator sees batches of varying size (recompiling a jitted one per size); the SDM programs do
not (concrete batches go through in pieces of ``chunk`` rows).
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffjax.search.noise_search import SearchResult, _generate, best_of_n

OFFSET = 2.0          # the 2 of (2 + q)


class SDMCalibration(NamedTuple):
    train_features: Any   # (N, F) the training points' features (N padded: few compiles)
    train_pred: Any       # (N,) their predictions (-1: padding, never a neighbour)
    train_correct: Any    # (N,) prediction == label
    dist_cdf: Any         # (C, M) sorted d_nearest of the calibration points with q > 0, by class
    dist_n: Any           # (C,) how many of each (the rows are +inf past that)
    out_cdf: Any          # (C, M) sorted sdm(z)_y of the calibration points of true class y
    qt_cdf: Any           # (C, M) sorted q~ of the calibration points, by true class
    cal_n: Any            # (C,) calibration points of each true class
    rescaler: Any         # (C, C) W of Eq. 11
    q_tilde_min: Any      # () the region's q~_min (inf: no region)
    thresholds: Any       # (C,) psi_c
    alpha: Any            # () alpha'
    max_q: Any            # () the cap on q


class SDMEstimate(NamedTuple):
    probs: Any            # (B, C) sdm(z), Eq. 7
    log_probs: Any        # (B, C) its log
    pred: Any             # (B,) y^
    q: Any                # (B,) Similarity
    d: Any                # (B,) Distance quantile
    d_nearest: Any        # (B,) L2 distance to the nearest training point
    v: Any                # (B, C) Eq. 9
    q_tilde: Any          # (B,) Eq. 10 (0 where the rescaling flips y^)
    o: Any                # (B, C) Eq. 11
    q_tilde_lower: Any    # (B,) Eq. 16 (0 where the rescaling flips y^)
    o_lower: Any          # (B, C) Eq. 18
    reliable: Any         # (B,) bool, admitted by Eq. 28
    confidence: Any       # (B,) o_lower[y^] if admitted, else 0


class SDMScores(NamedTuple):
    probs: Any
    q: Any
    d: Any
    reliable: Any
    confidence: Any


@jax.jit
def sdm_activation(logits, q, d):
    """Eq. 7: (2 + q)^(d z_i) / sum_c (2 + q)^(d z_c), as softmax(d ln(2 + q) z)."""
    return jax.nn.softmax(_sdm_scale(q, d)[:, None] * logits, axis=-1)


def _sdm_scale(q, d):
    return d * jnp.log(OFFSET + q.astype(jnp.float32))


def _similarity_distance(cal, features, pred, chunk: int):
    """(q, d_nearest) per query against the training points, brute force, ``chunk`` at a time."""
    tf = cal.train_features
    t2 = jnp.sum(tf * tf, axis=-1)
    ok = cal.train_correct

    def one(args):
        f, p = args
        d2 = jnp.maximum(t2 - 2.0 * (tf @ f) + f @ f, 0.0)
        d2 = jnp.where(cal.train_pred >= 0, d2, jnp.inf)           # padding (prediction -1)
        order = jnp.argsort(d2)                                   # nearest first (stable)
        stop = ~(ok & (cal.train_pred == p))[order]
        run = jnp.where(jnp.any(stop), jnp.argmax(stop), stop.shape[0])    # the first non-match
        return jnp.minimum(run, cal.max_q), jnp.sqrt(d2[order[0]])

    return jax.lax.map(one, (features, pred), batch_size=chunk)


def _below(rows, x):
    """#{row values < x} per class: rows (C, M) sorted (+inf past each count), x (B, C)."""
    return jnp.sum(rows[None] < x[:, :, None], axis=-1, dtype=jnp.int32)


def _distance_quantile(cal, d_nearest):
    """Eq. 6: min over classes of 1 - eCDF^c(d_nearest); 0 for a class without points."""
    n = cal.dist_n[None]
    below = _below(cal.dist_cdf, jnp.broadcast_to(d_nearest[:, None], (d_nearest.shape[0],
                                                                         n.shape[1])))
    return jnp.min(jnp.where(n > 0, (n - below) / jnp.maximum(n, 1), 0.0), axis=-1)


def _output_quantiles(cal, probs):
    """Eq. 9: v_c = eCDF^c(sdm(z)_c), 1 at or above the class's largest value, 0 with no points."""
    n = cal.cal_n[None]
    top = jnp.take_along_axis(cal.out_cdf, jnp.maximum(cal.cal_n - 1, 0)[:, None], 1)[:, 0]
    v = _below(cal.out_cdf, probs) / jnp.maximum(n, 1)
    return jnp.where(n > 0, jnp.where(probs >= top[None], 1.0, v), 0.0)


def _q_tilde(v, pred, q):
    """Eq. 10: ln((2 + q)^(v_y^))."""
    return jnp.take_along_axis(v, pred[:, None], 1)[:, 0] * jnp.log(OFFSET + q.astype(jnp.float32))


def _rescale(w, v, q_tilde):
    """Eq. 11: softmax(ln(2 + q~) v W)."""
    return jax.nn.softmax(jnp.log(OFFSET + q_tilde)[:, None] * (v @ w), axis=-1)


def _keep_prediction(q_tilde, o, pred):
    return jnp.where(jnp.argmax(o, axis=-1) == pred, q_tilde, 0.0)


def _dkw_eps(cal, q_tilde):
    """Eqs. 12-13: eps_c from the effective sample size n_c of each class at this q~."""
    n = jnp.minimum(_below(cal.qt_cdf, jnp.broadcast_to(q_tilde[:, None], (q_tilde.shape[0],
                                                                          cal.cal_n.shape[0]))),
                    cal.cal_n[None] - 1)
    eps = jnp.sqrt(jnp.log(2.0 / (1.0 - cal.alpha)) / (2.0 * jnp.maximum(n, 1)))
    return jnp.where(n > 0, eps, 1.0)


def _activation(cal, q, d_nearest, z, pred):
    """Eqs. 6-7: d, sdm(z), log sdm(z), and q for Eq. 10 (0 where d = 0 or y^ is lost)."""
    d = _distance_quantile(cal, d_nearest)
    scaled = _sdm_scale(q, d)[:, None] * z
    q_used = jnp.where((d > 0) & (jnp.argmax(scaled, -1) == pred), q, 0)
    return d, jax.nn.softmax(scaled, axis=-1), jax.nn.log_softmax(scaled, axis=-1), q_used


def _quantiles(cal, probs, pred, q_used):
    """Eqs. 9-10: v and q~."""
    v = _output_quantiles(cal, probs)
    return v, _q_tilde(v, pred, q_used)


_similarity_distance_jit = jax.jit(_similarity_distance, static_argnums=3)
_activation_jit, _quantiles_jit, _rescale_jit = (jax.jit(_activation), jax.jit(_quantiles),
                                                 jax.jit(_rescale))


def sdm_estimate(cal: SDMCalibration, features, logits, chunk: int = 256) -> SDMEstimate:
    """Every quantity of the module docstring for a batch: features (B, F), logits (B, C)."""
    _check_inputs(cal, features, logits)
    return _bucketed(lambda f, z: _estimate(f, z, cal=cal, chunk=chunk), (features, logits), chunk)


def _bucketed(call, arrays, chunk: int):
    """``call(*arrays)`` (row-wise in the arrays); concrete arrays go through in pieces of exactly
    ``chunk`` rows (the last one padded), so that batches of every size, as adaptive search makes,
    share one compiled program (an SDM program takes seconds to compile on a CPU)."""
    if any(isinstance(a, jax.core.Tracer) for a in arrays):
        return call(*arrays)
    arrays = [np.asarray(a) for a in arrays]
    b = arrays[0].shape[0]
    pieces = []
    for start in range(0, max(b, 1), chunk):
        part = [a[start:start + chunk] for a in arrays]
        pad = chunk - part[0].shape[0]
        part = [np.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)) for a in part]
        pieces.append(jax.tree.map(np.asarray, call(*part)))
    return jax.tree.map(lambda *a: jnp.asarray(np.concatenate(a)[:b]), *pieces)


@functools.partial(jax.jit, static_argnames="chunk")
def _estimate(features, logits, *, cal, chunk: int):
    z = logits.astype(jnp.float32)
    pred = jnp.argmax(z, axis=-1)
    q, d_nearest = _similarity_distance(cal, features.astype(jnp.float32), pred, chunk)
    d, probs, log_probs, q_used = _activation(cal, q, d_nearest, z, pred)
    v, qt = _quantiles(cal, probs, pred, q_used)
    o = _rescale(cal.rescaler, v, qt)
    qt = _keep_prediction(qt, o, pred)
    on = jax.nn.one_hot(pred, z.shape[-1])
    v_lo = jnp.clip(v + _dkw_eps(cal, qt) * (1.0 - 2.0 * on), 0.0, 1.0)        # Eq. 14
    qt_lo = _q_tilde(v_lo, pred, q_used)
    o_lo = _rescale(cal.rescaler, v_lo, qt_lo)
    qt_lo = _keep_prediction(qt_lo, o_lo, pred)
    in_set = o_lo >= cal.thresholds[None]
    singleton = jnp.any(in_set & (on > 0), -1) & (jnp.sum(in_set, -1) == 1)
    reliable = (jnp.floor(qt_lo) >= 1) & (qt_lo >= cal.q_tilde_min) & singleton
    p_lo = jnp.take_along_axis(o_lo, pred[:, None], 1)[:, 0]
    return SDMEstimate(probs, log_probs, pred, q, d, d_nearest, v, qt, o,
                       qt_lo, o_lo, reliable, jnp.where(reliable, p_lo, 0.0))


def sdm_scores(cal: SDMCalibration, features, logits, chunk: int = 256) -> SDMScores:
    """``(probs (B, C), q, d, reliable, confidence)``: the sdm activation (Eq. 7), Similarity,
    Distance, admission to the high-reliability region (Eq. 28) and the calibrated probability of
    the predicted class there, o_lower[y^] (0 outside it)."""
    e = sdm_estimate(cal, features, logits, chunk=chunk)
    return SDMScores(e.probs, e.q, e.d, e.reliable, e.confidence)


# ------------------------------------------------------------------------------------ fitting

def _class_rows(values, labels, mask, c: int):
    """Sorted values of each class (where mask), as (C, M) rows padded with +inf, and counts."""
    per = [np.sort(values[(labels == k) & mask]) for k in range(c)]
    m = _bucket(max(len(p) for p in per), 128)                       # few shapes: few compiles
    rows = np.full((c, m), np.inf, np.float32)
    for k, p in enumerate(per):
        rows[k, :len(p)] = p
    return jnp.asarray(rows), jnp.asarray([len(p) for p in per], jnp.int32)


def _bucket(n: int, base: int) -> int:
    """base times the smallest power of two with n <= base 2^k."""
    return base << max(-(-n // base) - 1, 0).bit_length()


def _pad_rows(a, size: int, fill):
    a = np.asarray(a)
    return np.concatenate([a, np.full((size - a.shape[0],) + a.shape[1:], fill, a.dtype)])


def _rescaler_loss(w, v, q_tilde, labels, weight):
    """Eq. 21: mean of -log_(2+q~) o_y (over the rows of weight 1; the others are padding)."""
    lb = jnp.log(OFFSET + q_tilde)
    lp = jax.nn.log_softmax(lb[:, None] * (v @ w), axis=-1)
    nll = -jnp.take_along_axis(lp, labels[:, None], 1)[:, 0] / lb
    return jnp.sum(weight * nll) / jnp.sum(weight)


@functools.partial(jax.jit, static_argnames="steps")
def _fit_rescaler(v, q_tilde, labels, weight, steps: int, lr):
    opt = optax.adam(lr)
    grad = jax.value_and_grad(_rescaler_loss)

    def step(carry, _):
        w, state, best_w, best = carry
        loss, g = grad(w, v, q_tilde, labels, weight)
        best_w, best = jnp.where(loss < best, w, best_w), jnp.minimum(loss, best)
        upd, state = opt.update(g, state, w)
        return (optax.apply_updates(w, upd), state, best_w, best), loss

    w0 = jnp.eye(v.shape[1])
    start = (w0, opt.init(w0), w0, jnp.asarray(jnp.inf, jnp.float32))
    (w, _, best_w, best), _ = jax.lax.scan(step, start, None, steps)
    return jnp.where(_rescaler_loss(w, v, q_tilde, labels, weight) < best, w, best_w)


def _find_region(q_tilde, o_true, labels, ok, alpha: float, c: int):
    """Alg. 3: the smallest admissible q~_min and the class thresholds psi, or (inf, zeros)."""
    for t in np.unique(q_tilde[ok]):
        keep = ok & (q_tilde >= t)
        psi = np.zeros(c)
        for k in range(c):
            vals = np.sort(o_true[keep & (labels == k)])
            if vals.size:
                psi[k] = max(vals[min(int((1.0 - alpha) * vals.size), vals.size - 1)], 0.0)
        if np.all(psi >= alpha):
            return float(t), psi
    return math.inf, np.zeros(c)


def fit_sdm(features_train, labels_train, logits_train, features_cal, labels_cal, logits_cal, *,
            alpha: float = 0.95, max_q: int = 1000, rescaler_steps: int = 1000,
            rescaler_lr: float = 0.05, chunk: int = 256) -> SDMCalibration:
    """The SDM calibration (module docstring) of a classifier from its features (N, F), labels (N,)
    and logits (N, C) on a training set and on a held-out calibration set (as large as can be
    had: the region and the DKW band shrink with it). ``max_q`` caps q; ``rescaler_steps`` and
    ``rescaler_lr`` fit W (Eq. 21); ``chunk`` queries at a time in the neighbour search. Warns
    when no high-reliability region reaches ``alpha`` (then nothing is admitted)."""
    ftr, ytr, ztr = _checked_split("training", features_train, labels_train, logits_train)
    fca, yca, zca = _checked_split("calibration", features_cal, labels_cal, logits_cal)
    c = ztr.shape[1]
    if fca.shape[1] != ftr.shape[1] or zca.shape[1] != c:
        raise ValueError(f"fit_sdm: the calibration set has {fca.shape[1]} features and "
                         f"{zca.shape[1]} classes, the training set {ftr.shape[1]} and {c}: "
                         f"use the same classifier for both")
    if c < 2:
        raise ValueError(f"fit_sdm: need at least 2 classes, the logits have {c}")
    for name, y in (("training", ytr), ("calibration", yca)):
        if y.min() < 0 or y.max() >= c:
            raise ValueError(f"fit_sdm: {name} labels must lie in 0 .. {c - 1} (the logits have "
                             f"{c} classes), got {int(y.min())} .. {int(y.max())}")
    if not max(0.5, 1.0 / c) < alpha < 1.0:
        raise ValueError(f"fit_sdm: alpha' must lie in ({max(0.5, 1.0 / c):g}, 1) (above 1/C and "
                         f"1/2), got {alpha}")
    if max_q < 1 or rescaler_steps < 1:
        raise ValueError(f"fit_sdm: max_q and rescaler_steps must be >= 1, got {max_q} and "
                         f"{rescaler_steps}")
    pred_tr, pred, n = ztr.argmax(1), zca.argmax(1), len(yca)
    train = [_pad_rows(a, _bucket(len(ytr), 128), fill) for a, fill in
             ((ftr, 0.0), (pred_tr.astype(np.int32), -1), (pred_tr == ytr, False))]
    empty, none = jnp.asarray(np.zeros((c, 1), np.float32)), jnp.asarray(np.zeros(c, np.int32))
    cal = SDMCalibration(*map(jnp.asarray, train), empty, none, empty, empty, none,
                         jnp.asarray(np.eye(c, dtype=np.float32)), jnp.asarray(math.inf),
                         jnp.asarray(np.zeros(c, np.float32)), jnp.asarray(alpha, jnp.float32),
                         jnp.asarray(max_q, jnp.int32))
    q, dn = map(np.asarray, _bucketed(lambda f, p: _similarity_distance_jit(cal, f, p, chunk),
                                      (fca, pred), chunk))
    dist_cdf, dist_n = _class_rows(dn, yca, q > 0, c)
    cal = cal._replace(dist_cdf=dist_cdf, dist_n=dist_n)
    _, probs, _, q_used = _bucketed(lambda *a: _activation_jit(cal, *a), (q, dn, zca, pred), chunk)
    everyone = np.ones(n, bool)
    out_cdf, cal_n = _class_rows(np.asarray(probs)[np.arange(n), yca], yca, everyone, c)
    cal = cal._replace(out_cdf=out_cdf, cal_n=cal_n)
    v, qt = _bucketed(lambda *a: _quantiles_jit(cal, *a), (probs, pred, q_used), chunk)
    cal = cal._replace(qt_cdf=_class_rows(np.asarray(qt), yca, everyone, c)[0])
    size = _bucket(n, chunk)
    w = _fit_rescaler(*(_pad_rows(np.asarray(a), size, 0) for a in (v, qt, yca, everyone * 1.0)),
                      rescaler_steps, rescaler_lr)
    o = np.asarray(_bucketed(lambda *a: _rescale_jit(w, *a), (v, qt), chunk))
    qt = np.asarray(qt)
    ok = (np.floor(qt) >= 1) & (o.argmax(1) == pred)
    q_min, psi = _find_region(qt, o[np.arange(len(yca)), yca], yca, ok, alpha, c)
    if not math.isfinite(q_min):
        warnings.warn(f"fit_sdm: no high-reliability region reaches alpha' = {alpha} on the "
                      f"calibration set, so no point will be admitted: lower alpha', or use more "
                      f"data or a stronger classifier", stacklevel=2)
    return cal._replace(rescaler=w, q_tilde_min=jnp.asarray(q_min, jnp.float32),
                        thresholds=jnp.asarray(psi, jnp.float32))


def _checked_split(name, features, labels, logits):
    f, y, z = np.asarray(features, np.float32), np.asarray(labels), np.asarray(logits, np.float32)
    if f.ndim != 2 or z.ndim != 2 or y.ndim != 1:
        raise ValueError(f"fit_sdm: the {name} set needs features (N, F), labels (N,) and logits "
                         f"(N, C), got shapes {f.shape}, {y.shape} and {z.shape}")
    if not f.shape[0] == y.shape[0] == z.shape[0]:
        raise ValueError(f"fit_sdm: the {name} features, labels and logits disagree on the number "
                         f"of points: {f.shape[0]}, {y.shape[0]} and {z.shape[0]}")
    if f.shape[0] == 0:
        raise ValueError(f"fit_sdm: the {name} set is empty; SDM needs labelled points in both the "
                         f"training and the calibration set")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"fit_sdm: {name} labels must be integer class indices, got {y.dtype}")
    if not (np.isfinite(f).all() and np.isfinite(z).all()):
        raise ValueError(f"fit_sdm: the {name} features or logits contain NaN or inf")
    return f, y.astype(np.int32), z


def _check_inputs(cal, features, logits):
    f, c = cal.train_features.shape[1], cal.rescaler.shape[0]
    if features.ndim != 2 or features.shape[1] != f:
        raise ValueError(f"SDM: expected features of shape (B, {f}) (those of the fitted "
                         f"classifier), got {features.shape}")
    if logits.shape != (features.shape[0], c):
        raise ValueError(f"SDM: expected logits of shape ({features.shape[0]}, {c}) for "
                         f"{features.shape[0]} features, got {logits.shape}")


# ----------------------------------------------------------------------------------- verifier

def calibrated_verifier(cal: SDMCalibration, features_fn: Callable, logits_fn: Callable,
                        classes: Sequence[int] | None = None, label_key: str = "label",
                        chunk: int = 256):
    """``verifier(x0, cond) -> (B,)``: log of the sdm probability mass of ``classes`` (Eq. 7; one
    class: its log-probability; ``None``: each example's ``cond[label_key]``), the contract of
    search/verifiers.py. ``verifier.confidence(x0, cond) -> (B,)``: o_lower[y^] where y^ is one of
    the requested classes and the point is admitted (Eq. 28), else 0. ``features_fn(x0) -> (B, F)``
    and ``logits_fn(x0) -> (B, C)`` are the fitted classifier's."""
    num = cal.rescaler.shape[0]
    idx = None if classes is None else sorted(set(int(k) for k in classes))
    if idx is not None and not idx:
        raise ValueError("calibrated_verifier: classes is empty; give class indices or None "
                         "for cond[label_key]")
    if idx is not None and not all(0 <= k < num for k in idx):
        raise ValueError(f"calibrated_verifier: classes must lie in 0 .. {num - 1} (the fitted "
                         f"classifier's), got {idx}")

    class_mask = np.zeros(num, bool)
    class_mask[idx or []] = True

    def scored(x0, cond):
        f, z = features_fn(x0), logits_fn(x0)
        _check_inputs(cal, f, z)
        if idx is None:
            if cond is None or label_key not in cond:
                raise ValueError(f"calibrated_verifier with classes=None scores the label of "
                                 f"each example: it needs cond[{label_key!r}]")
            labels = cond[label_key]
            if not isinstance(labels, jax.core.Tracer):
                labels = np.asarray(labels)
                if labels.shape != (f.shape[0],) or labels.min() < 0 or labels.max() >= num:
                    raise ValueError(f"calibrated_verifier: cond[{label_key!r}] must hold one "
                                     f"class in 0 .. {num - 1} per example, got {labels}")
        else:
            labels = np.full(f.shape[0], -1, np.int32)
        return _bucketed(lambda *a: _verify(*a, cal=cal, class_mask=class_mask, chunk=chunk),
                         (f, z, labels), chunk)

    def verifier(x0, cond=None):
        return scored(x0, cond)[0]

    def confidence(x0, cond=None):
        return scored(x0, cond)[1]

    verifier.confidence = confidence
    verifier.estimate = lambda x0: sdm_estimate(cal, features_fn(x0), logits_fn(x0), chunk=chunk)
    return verifier


@functools.partial(jax.jit, static_argnames="chunk")
def _verify(features, logits, labels, *, cal, class_mask, chunk: int):
    """(log sdm mass of the wanted classes, confidence where y^ is one of them): the wanted
    classes are ``class_mask`` or, where labels >= 0, each example's label."""
    e = _estimate(features, logits, cal=cal, chunk=chunk)
    want = class_mask[None] | (jax.nn.one_hot(labels.astype(jnp.int32), class_mask.shape[0]) > 0)
    score = jax.nn.logsumexp(jnp.where(want, e.log_probs, -jnp.inf), axis=-1)
    hit = jnp.take_along_axis(want, e.pred[:, None], 1)[:, 0]
    return score, jnp.where(hit, e.confidence, 0.0)


# ------------------------------------------------------------------------------ adaptive budget

def adaptive_best_of_n(key, gen: Callable, verifier, confidence_fn: Callable, *, shape, n_min: int,
                       n_max: int, threshold: float, cond=None,
                       batch_size: int = 256) -> SearchResult:
    """Best-of-N with more candidates only where the chosen one is not confident (module docstring).
    ``confidence_fn(x0, cond) -> (B,)``; ``history`` has one row per round run (the first is
    best_of_n with ``n_min``)."""
    if not 1 <= n_min <= n_max:
        raise ValueError(f"adaptive_best_of_n: need 1 <= n_min <= n_max, got n_min={n_min}, "
                         f"n_max={n_max}")
    if not math.isfinite(threshold):
        raise ValueError(f"adaptive_best_of_n: threshold must be a finite number, got {threshold}")
    if getattr(verifier, "per_set", False):
        raise ValueError("adaptive_best_of_n: a rank ensemble scores within one set of candidates, "
                         "so scores of different rounds cannot be compared; use a verifier that "
                         "scores each candidate alone")
    b, tail = shape[0], tuple(shape[1:])
    out = best_of_n(key, gen, verifier, shape=shape, n=n_min, cond=cond, batch_size=batch_size)
    x, noise, best = np.array(out.x), np.array(out.noise), np.array(out.score)
    nfe, conf = out.nfe, _confidence(confidence_fn, out.x, cond, b)
    history, total = [best.copy()], n_min
    while total < n_max:
        todo = np.flatnonzero(conf < threshold)         # bookkeeping on the host: no recompiles
        if todo.size == 0:
            break
        new, u = min(2 * total, n_max) - total, todo.size
        nz = _candidate_noise(key, todo, total, new, tail)
        cands = _subset(cond, todo, new)
        xc, used = _generate(gen, nz.reshape((u * new,) + tail), cands, batch_size)
        nfe += used
        sc = np.asarray(verifier(xc, cands)).reshape(u, new)
        j = np.argmax(sc, axis=1)
        top = sc[np.arange(u), j]
        better = top > best[todo]
        if better.any():
            up = todo[better]
            x[up] = np.asarray(xc).reshape((u, new) + x.shape[1:])[np.arange(u), j][better]
            noise[up] = nz[np.arange(u), j][better]
            best[up] = top[better]
            conf[up] = _confidence(confidence_fn, jnp.asarray(x[up]), _subset(cond, up, 1),
                                   up.size)
        total += new
        history.append(best.copy())
    return SearchResult(jnp.asarray(x), jnp.asarray(noise), jnp.asarray(best), int(nfe),
                        jnp.asarray(np.stack(history)))


def _candidate_noise(key, idx, start: int, new: int, tail):
    """(len(idx), new, *tail) unit normals: candidate j (start <= j < start + new) of example i
    from fold_in(fold_in(fold_in(key, 1), i), j), whoever else is drawn with it; made in one
    padded batch of 256 times a power of two candidates, so the rounds compile a few times."""
    ids = np.stack(np.meshgrid(idx, np.arange(start, start + new), indexing="ij"), -1)
    ids = ids.reshape(-1, 2).astype(np.int32)
    size = 256 << max(-(-len(ids) // 256) - 1, 0).bit_length()
    padded = np.zeros((size, 2), np.int32)
    padded[:len(ids)] = ids
    out = np.asarray(_noise_of(jax.random.fold_in(key, 1), jnp.asarray(padded), tail))
    return out[:len(ids)].reshape((idx.size, new) + tail)


@functools.partial(jax.jit, static_argnums=2)
def _noise_of(key, ids, tail):
    one = lambda ij: jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, ij[0]), ij[1]),
                                       tail)
    return jax.vmap(one)(ids)


def _subset(cond, idx, n: int):
    """cond of the examples ``idx``, each repeated n times (candidates of one example adjacent)."""
    if cond is None:
        return None
    return jax.tree.map(lambda v: jnp.asarray(np.repeat(np.asarray(v)[idx], n, axis=0)), cond)


def _confidence(confidence_fn, x, cond, b: int):
    c = np.array(confidence_fn(x, cond), dtype=np.float32)
    if c.shape != (b,):
        raise ValueError(f"adaptive_best_of_n: confidence_fn returned shape {c.shape} for {b} "
                         f"samples; expected ({b},)")
    return c
