"""The SDM calibrated verifier and the adaptive budget (search/calibrated.py): the sdm activation
against hand values and a loop reference written from Eqs. 5-7, its out-of-distribution and
in-distribution behaviour, the region's accuracy (Def. 4.3) on a 2-class Gaussian problem, Alg. 3's
minimality, and the adaptive budget's exact NFE and its per-example candidate counts."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.search import calibrated as cb
from diffjax.search import noise_search as ns
from diffjax.search import verifiers as V

ALPHA = 0.95
W = np.array([[-1.5, 0.0], [1.5, 0.0]], np.float32)        # logits = x W^T: class 1 to the right


def gaussian(seed, n, mu=1.2):
    """Two classes N((-mu, 0), I) and N((mu, 0), I), the linear classifier's features and logits."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 2)) + np.where(y[:, None] == 1, mu, -mu) * np.array([1.0, 0.0])
    x = x.astype(np.float32)
    return x, y, x @ W.T


@pytest.fixture(scope="module")
def fitted():
    tr, ca, te = gaussian(0, 1500), gaussian(1, 1500), gaussian(2, 1500)
    return cb.fit_sdm(*tr, *ca, alpha=ALPHA, rescaler_steps=400), ca, te


def line(xs):
    return np.stack([np.asarray(xs, np.float32), np.zeros(len(xs), np.float32)], 1)


def two_class_logits(pred):
    """Logits (1, -1) for class 0 and (-1, 1) for class 1."""
    return np.where(np.asarray(pred)[:, None] == 0, [1.0, -1.0], [-1.0, 1.0]).astype(np.float32)


# Training points on a line at 0, 1, 2, 3 with labels 0, 0, 0, 1 and predictions 0, 0, 1, 1 (the
# third is wrong). Calibration points, with (nearest distance, q) worked out by hand:
#   -0.1 y0 y^0 (0.1, 2)   1.3 y0 y^0 (0.3, 1)   3.2 y1 y^1 (0.2, 1)   3.5 y1 y^1 (0.5, 1)
#   2.02 y1 y^0 (0.02, 0: excluded from the distance eCDFs)
TOY_TRAIN = (line([0, 1, 2, 3]), np.array([0, 0, 0, 1]), two_class_logits([0, 0, 1, 1]))
TOY_CAL = (line([-0.1, 1.3, 3.2, 3.5, 2.02]), np.array([0, 0, 1, 1, 1]),
           two_class_logits([0, 0, 1, 1, 0]))


def toy_fit(**kw):
    with pytest.warns(UserWarning, match="no high-reliability region"):   # 5 points cannot
        return cb.fit_sdm(*TOY_TRAIN, *TOY_CAL, alpha=ALPHA, rescaler_steps=5, **kw)


def test_sdm_activation_by_hand_on_a_toy_line():
    cal = toy_fit()
    f = line([-0.25, 3.4, 0.95, 3.45, 3.45])
    z = np.array([[1, -1], [-1, 1], [1, 0], [-1, 1], [1, -1]], np.float32)
    s = cb.sdm_scores(cal, jnp.asarray(f), jnp.asarray(z))
    # q: -0.25 -> 0 ok, 1 ok, 2 wrong: 2; 3.4 -> 3 ok, 2 wrong: 1; 0.95 -> 1, 0 ok, 2 wrong: 2;
    # 3.45 predicted 1 -> 1; predicted 0 -> the nearest (3) is predicted 1: 0
    np.testing.assert_array_equal(s.q, [2, 1, 2, 1, 0])
    # d: distance 0.25 is below 1 of class 0's {0.1, 0.3} and 1 of class 1's {0.2, 0.5}: 1 - 1/2;
    # 0.4 and 0.45 are above both of class 0's: 0; 0.05 is below every one: 1
    np.testing.assert_allclose(s.d, [0.5, 0.0, 1.0, 0.0, 0.0], atol=1e-6)
    # (2 + 2)^(0.5 z) = 2^z: (2, 1/2) / 2.5;  d = 0: uniform;  4^z with z = (1, 0): (4, 1) / 5
    np.testing.assert_allclose(s.probs[:3], [[0.8, 0.2], [0.5, 0.5], [0.8, 0.2]], rtol=1e-5)
    assert not np.asarray(s.reliable).any() and not np.asarray(s.confidence).any()


def reference_q_d(train, cal_set, f, z, max_q):
    """Eqs. 5-7 with loops: q, d and sdm(z) of each query."""
    ftr, ytr, ztr = train
    fca, yca, zca = cal_set
    ptr = ztr.argmax(1)

    def q_dn(x, p):
        dist = np.linalg.norm(ftr.astype(np.float64) - x, axis=1)
        q = 0
        for i in np.argsort(dist, kind="stable"):
            if ptr[i] != ytr[i] or ptr[i] != p or q == max_q:
                break
            q += 1
        return q, dist.min()

    cal_stats = [q_dn(x, p) for x, p in zip(fca, zca.argmax(1))]
    per_class = [[dn for (q, dn), y in zip(cal_stats, yca) if q > 0 and y == c] for c in range(2)]
    out = []
    for x, zz in zip(f, z):
        q, dn = q_dn(x, zz.argmax())
        d = min((1 - sum(v < dn for v in vals) / len(vals)) if vals else 0.0 for vals in per_class)
        e = (2.0 + q) ** (d * zz.astype(np.float64))
        out.append((q, d, e / e.sum()))
    return out


def test_sdm_activation_matches_a_loop_reference():
    rng = np.random.default_rng(3)

    def mk(n):        # labels by the sign of x_0 (noisy), logits a noisy linear classifier
        x = rng.normal(size=(n, 2)).astype(np.float32)
        y = (x[:, 0] + 0.4 * rng.normal(size=n) > 0).astype(np.int32)
        return x, y, (np.stack([-x[:, 0], x[:, 0]], 1) + 0.4 * rng.normal(size=(n, 2))).astype(
            np.float32)

    train, cal_set = mk(40), mk(30)
    f, _, z = mk(25)
    f = f * 1.5
    for max_q in (1000, 2):
        with pytest.warns(UserWarning):
            cal = cb.fit_sdm(*train, *cal_set, alpha=ALPHA, max_q=max_q, rescaler_steps=5, chunk=7)
        s = cb.sdm_scores(cal, jnp.asarray(f), jnp.asarray(z), chunk=4)
        ref = reference_q_d(train, cal_set, f, z, max_q)
        np.testing.assert_array_equal(s.q, [r[0] for r in ref])
        np.testing.assert_allclose(s.d, [r[1] for r in ref], atol=1e-6)
        np.testing.assert_allclose(s.probs, np.stack([r[2] for r in ref]), rtol=1e-4, atol=1e-6)
    ref = reference_q_d(train, cal_set, f, z, 1000)
    assert max(r[0] for r in ref) > 2 and min(r[0] for r in ref) == 0        # the cap bites
    assert 0 < np.mean([0 < r[1] < 1 for r in ref]) < 1


def test_similarity_stops_at_the_first_wrong_or_mismatching_neighbour():
    ftr = line([0, 1, 2, 3, 4, 5])
    base = dict(labels=np.array([1, 1, 1, 1, 1, 1]), preds=[1, 1, 1, 1, 1, 1])
    cases = [  # (labels, predictions) of the training points -> q at x = -0.5, predicted 1
        (base["labels"], base["preds"], 6),
        (base["labels"], [1, 1, 0, 1, 1, 1], 2),                  # third predicted 0 (and wrong)
        (np.array([1, 1, 1, 0, 1, 1]), [1, 1, 1, 1, 1, 1], 3),    # fourth predicted 1 but wrong
        (np.array([1, 1, 0, 0, 1, 1]), [1, 1, 0, 0, 1, 1], 2),    # third correct but another class
        (np.array([0, 1, 1, 1, 1, 1]), [0, 1, 1, 1, 1, 1], 0),    # the nearest already mismatches
    ]
    cal_set = (line([0.5, 4.5]), np.array([0, 1]), two_class_logits([0, 1]))
    for labels, preds, want in cases:
        with pytest.warns(UserWarning):
            cal = cb.fit_sdm(ftr, labels, two_class_logits(preds), *cal_set, alpha=ALPHA,
                             rescaler_steps=2)
        s = cb.sdm_scores(cal, jnp.asarray(line([-0.5])), jnp.asarray(two_class_logits([1])))
        assert int(s.q[0]) == want, (labels, preds)


def test_far_inputs_are_uniform_and_unconfident_near_ones_confident(fitted):
    cal, _, _ = fitted
    assert math.isfinite(float(cal.q_tilde_min))
    far = np.array([[40.0, 0.0], [0.0, 30.0], [-60.0, 5.0]], np.float32)
    s = cb.sdm_scores(cal, jnp.asarray(far), jnp.asarray(far @ W.T))
    np.testing.assert_array_equal(s.d, 0.0)
    np.testing.assert_allclose(s.probs, 0.5, atol=1e-6)
    assert not np.asarray(s.reliable).any() and not np.asarray(s.confidence).any()
    # softmax would be all but certain for the first and last
    assert float(jax.nn.softmax(far @ W.T)[0, 1]) > 0.999
    # held-out points in the dense, clean band 1.8 < |x_0| < 2.6: q is large, d is not small
    f, y, z = gaussian(5, 3000)
    band = (np.abs(f[:, 0]) > 1.8) & (np.abs(f[:, 0]) < 2.6) & (np.abs(f[:, 1]) < 0.7)
    s = cb.sdm_scores(cal, jnp.asarray(f[band]), jnp.asarray(z[band]))
    r, conf = np.asarray(s.reliable), np.asarray(s.confidence)
    assert band.sum() > 100 and r.mean() > 0.7 and np.median(np.asarray(s.q)) > 30
    assert (conf[r] >= ALPHA).all() and np.median(conf) > 0.98
    # at the boundary the neighbourhood mixes classes: q is small and nothing is admitted
    mid = np.array([[0.05, 0.0], [-0.1, 1.0]], np.float32)
    s = cb.sdm_scores(cal, jnp.asarray(mid), jnp.asarray(mid @ W.T))
    assert not np.asarray(s.reliable).any() and (np.asarray(s.q) < 10).all()


def region_accuracies(cal, data):
    f, y, z = data
    s = cb.sdm_scores(cal, jnp.asarray(f), jnp.asarray(z))
    r, pred = np.asarray(s.reliable), z.argmax(1)
    right = pred == y
    by = [right[r & (y == c)].mean() for c in range(2)] + [right[r & (pred == c)].mean()
                                                           for c in range(2)]
    return r.mean(), right.mean(), right[r].mean(), min(by)


def test_the_region_reaches_alpha_on_calibration_and_held_out_points(fitted):
    cal, ca, te = fitted
    for data, slack in ((ca, 0.0), (te, 0.03)):
        admitted, overall, inside, worst = region_accuracies(cal, data)
        assert overall < ALPHA - 0.03            # the classifier alone is not reliable enough
        assert admitted > 0.1                    # and the region is not empty
        assert inside >= ALPHA - slack and worst >= ALPHA - slack - 0.02, (admitted, inside, worst)


def test_the_region_is_the_smallest_q_tilde_that_reaches_alpha(fitted):
    cal, (f, y, z), _ = fitted
    e = cb.sdm_estimate(cal, jnp.asarray(f), jnp.asarray(z))
    qt, o = np.asarray(e.q_tilde), np.asarray(e.o)
    ok = np.floor(qt) >= 1                    # (q~ is already 0 where the rescaling flips y^)
    o_true = o[np.arange(len(y)), y]

    def psi(vals):       # Alg. 3's (1 - alpha') quantile: sorted[floor((1 - alpha') n)]
        vals = np.sort(vals)
        return vals[min(int((1 - ALPHA) * vals.size), vals.size - 1)] if vals.size else 0.0

    def reaches(t):
        keep = ok & (qt >= t)
        return all(psi(o_true[keep & (y == c)]) >= ALPHA for c in range(2))

    t = float(cal.q_tilde_min)
    assert reaches(t)
    assert not reaches(np.max(qt[ok & (qt < t)]))
    for c in range(2):
        keep = ok & (qt >= t) & (y == c)
        assert np.mean(o_true[keep] >= float(cal.thresholds[c])) >= ALPHA


def test_quantiles_and_the_lower_estimate_follow_eqs_9_to_18(fitted):
    cal, _, (f, y, z) = fitted
    e = cb.sdm_estimate(cal, jnp.asarray(f), jnp.asarray(z))
    probs, pred = np.asarray(e.probs, np.float64), np.asarray(e.pred)
    n_cls, rows = np.asarray(cal.cal_n), np.asarray(cal.out_cdf)
    w = np.asarray(cal.rescaler, np.float64)
    cls = [np.sort(rows[c, :n_cls[c]]) for c in range(2)]           # sdm(z)_y of class y
    qt_cls = [np.sort(np.asarray(cal.qt_cdf)[c, :n_cls[c]]) for c in range(2)]
    # Eq. 9: v_c = #{class-c outputs < sdm(z)_c} / n_c, 1 at or above their largest
    v = np.stack([np.where(probs[:, c] >= cls[c][-1], 1.0,
                           np.sum(cls[c][None] < probs[:, c:c + 1], 1) / n_cls[c])
                  for c in range(2)], 1)
    np.testing.assert_allclose(e.v, v, atol=1e-6)
    q = np.where(np.asarray(e.d) > 0, np.asarray(e.q), 0).astype(np.float64)
    lnq = np.log(2.0 + q)
    qt = v[np.arange(len(y)), pred] * lnq                             # Eq. 10

    def soft(a):
        e = np.exp(a - a.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    o = soft(np.log(2.0 + qt)[:, None] * (v @ w))                     # Eq. 11
    qt = np.where(o.argmax(1) == pred, qt, 0.0)
    np.testing.assert_allclose(e.q_tilde, qt, rtol=1e-5, atol=1e-5)
    # Eqs. 12-13: effective sample sizes at q~ and the DKW half-widths; Eq. 14: the band
    at = np.asarray(e.q_tilde)            # (the module's float32 q~, for exact ranks)
    n_eff = np.stack([np.minimum(np.sum(qt_cls[c][None] < at[:, None], 1), n_cls[c] - 1)
                      for c in range(2)], 1)
    eps = np.where(n_eff > 0, np.sqrt(np.log(2 / (1 - ALPHA)) / (2 * np.maximum(n_eff, 1))), 1.0)
    mine = np.arange(2)[None] == pred[:, None]
    v_lo = np.clip(np.where(mine, v - eps, v + eps), 0, 1)
    qt_lo = v_lo[np.arange(len(y)), pred] * lnq                       # Eq. 16
    o_lo = soft(np.log(2.0 + qt_lo)[:, None] * (v_lo @ w))            # Eq. 18
    keep = o_lo.argmax(1) == pred
    np.testing.assert_allclose(np.asarray(e.q_tilde_lower)[keep], qt_lo[keep], rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(np.asarray(e.o_lower)[keep], o_lo[keep], rtol=1e-4, atol=1e-5)
    assert (eps[mine] < 0.2).mean() > 0.5 and (eps > 0.02).all()      # a band, not a no-op


def test_the_verifier_scores_the_sdm_mass_and_confidence_of_the_requested_classes(fitted):
    cal, _, _ = fitted
    x = jnp.array([[3.0, 0.0], [-3.0, 0.0], [0.1, 0.0], [40.0, 0.0]])
    logits_fn = lambda a: a @ W.T
    s = cb.sdm_scores(cal, x, logits_fn(x))
    v1 = cb.calibrated_verifier(cal, lambda a: a, logits_fn, classes=[1])
    np.testing.assert_allclose(v1(x), np.log(s.probs[:, 1]), rtol=1e-5)
    np.testing.assert_allclose(v1.confidence(x), [float(s.confidence[0]), 0, 0, 0], rtol=1e-6)
    assert jax.eval_shape(v1, x).shape == (4,)                      # traceable under jit
    assert float(s.confidence[1]) >= ALPHA          # confident, but of class 0, not 1
    both = cb.calibrated_verifier(cal, lambda a: a, logits_fn, classes=[0, 1])
    np.testing.assert_allclose(both(x), 0.0, atol=1e-6)
    lab = cb.calibrated_verifier(cal, lambda a: a, logits_fn)
    cond = {"label": jnp.array([0, 0, 1, 1])}
    want = np.log(np.asarray(s.probs)[np.arange(4), [0, 0, 1, 1]])
    np.testing.assert_allclose(lab(x, cond), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lab.confidence(x, cond), [0, float(s.confidence[1]), 0, 0])
    with pytest.raises(ValueError, match="needs cond"):
        lab(x)
    with pytest.raises(ValueError, match=r"classes must lie in 0 \.\. 1"):
        cb.calibrated_verifier(cal, lambda a: a, logits_fn, classes=[2])
    with pytest.raises(ValueError, match=r"features of shape \(B, 2\)"):
        cb.calibrated_verifier(cal, lambda a: jnp.ones((4, 3)), logits_fn, classes=[1])(x)


def recording_generator(nfe: int, log: list):
    """noise -> noise, ``nfe`` evaluations per sample; logs the example ids it is asked for."""
    def gen(noise, cond=None):
        log.extend(np.asarray(cond["id"]).tolist())
        return noise, nfe
    return gen


A = jnp.array([1.0, -0.5])
CLOSE = V.from_fn(jax.jit(lambda x: -jnp.sum((x - A) ** 2, -1)))


def test_unconfident_examples_get_the_doubling_schedule_and_confident_ones_n_min():
    b = 64
    hard = (np.arange(b) % 3 == 0).astype(np.int32)
    cond = {"id": jnp.arange(b), "hard": jnp.asarray(hard)}
    conf = lambda x, c: 1.0 - c["hard"].astype(jnp.float32)
    log = []
    out = cb.adaptive_best_of_n(jax.random.key(0), recording_generator(3, log), CLOSE, conf,
                                shape=(b, 2), n_min=2, n_max=12, threshold=0.5, cond=cond,
                                batch_size=37)
    counts = np.bincount(log, minlength=b)
    np.testing.assert_array_equal(counts, np.where(hard == 1, 12, 2))
    assert out.nfe == 3 * (b * 2 + hard.sum() * (2 + 4 + 4))     # rounds: 2 -> 4 -> 8 -> 12
    assert out.history.shape == (4, b)
    bon = ns.best_of_n(jax.random.key(0), recording_generator(3, []), CLOSE, shape=(b, 2), n=2,
                       cond=cond)
    easy = hard == 0
    np.testing.assert_array_equal(np.asarray(out.noise)[easy], np.asarray(bon.noise)[easy])
    np.testing.assert_array_equal(np.asarray(out.score)[easy], np.asarray(bon.score)[easy])
    assert (np.asarray(out.score) >= np.asarray(bon.score)).all()
    assert (np.asarray(out.score) > np.asarray(bon.score))[~easy].mean() > 0.5
    np.testing.assert_allclose(out.score, CLOSE(out.x), rtol=1e-6)
    np.testing.assert_array_equal(out.x, out.noise)         # the chosen noise is the chosen x's


def test_nfe_is_the_closed_form_of_who_was_unconfident_after_each_round():
    tau, n_min, n_max, b = -0.3, 2, 16, 64
    conf = lambda x, c: (CLOSE(x) > tau).astype(jnp.float32)
    gen = lambda noise, cond=None: (noise, 5)
    out = cb.adaptive_best_of_n(jax.random.key(1), gen, CLOSE, conf, shape=(b, 2), n_min=n_min,
                                n_max=n_max, threshold=0.5, batch_size=37)
    h = np.asarray(out.history)
    assert np.all(np.diff(h, axis=0) >= 0)
    totals = [n_min]
    while totals[-1] < n_max:
        totals.append(min(2 * totals[-1], n_max))
    want = b * n_min
    for r in range(h.shape[0] - 1):
        want += int(np.sum(h[r] <= tau)) * (totals[r + 1] - totals[r])
    assert out.nfe == 5 * want
    assert h.shape[0] == len(totals) or not np.any(h[-1] <= tau)     # stops once all confident
    bon = ns.best_of_n(jax.random.key(1), gen, CLOSE, shape=(b, 2), n=n_min)
    np.testing.assert_array_equal(h[0], bon.score)
    assert (np.asarray(out.score) >= np.asarray(bon.score)).all()
    unsure = np.asarray(bon.score) <= tau
    assert unsure.sum() > 10 and np.mean(np.asarray(out.score)[unsure] > tau) > 0.5
    np.testing.assert_array_equal(np.asarray(out.score)[~unsure], np.asarray(bon.score)[~unsure])


def test_the_calibrated_verifier_steers_the_adaptive_budget(fitted):
    cal, _, _ = fitted
    v = cb.calibrated_verifier(cal, lambda a: a, lambda a: a @ W.T, classes=[1])
    gen = lambda noise, cond=None: (noise * 1.5, 1)                 # samples over both classes
    kw = dict(shape=(48, 2), batch_size=256)
    bon = ns.best_of_n(jax.random.key(2), gen, v, n=1, **kw)
    out = cb.adaptive_best_of_n(jax.random.key(2), gen, v, v.confidence, n_min=1, n_max=16,
                                threshold=ALPHA, **kw)
    before, after = np.asarray(v.confidence(bon.x)), np.asarray(v.confidence(out.x))
    assert np.mean(after >= ALPHA) > np.mean(before >= ALPHA) + 0.3
    assert 48 <= out.nfe < 48 * 16 and (np.asarray(out.score) >= np.asarray(bon.score)).all()


def test_bad_inputs_are_refused_with_a_reason():
    tr = gaussian(0, 50)
    ca = gaussian(1, 50)
    with pytest.raises(ValueError, match="disagree on the number of points"):
        cb.fit_sdm(tr[0], tr[1][:-1], tr[2], *ca)
    with pytest.raises(ValueError, match="calibration set is empty"):
        cb.fit_sdm(*tr, ca[0][:0], ca[1][:0], ca[2][:0])
    with pytest.raises(ValueError, match=r"labels must lie in 0 \.\. 1"):
        cb.fit_sdm(*tr, ca[0], ca[1] + 1, ca[2])
    with pytest.raises(ValueError, match="same classifier"):
        cb.fit_sdm(*tr, ca[0][:, :1], ca[1], ca[2])
    with pytest.raises(ValueError, match=r"alpha' must lie in \(0.5, 1\)"):
        cb.fit_sdm(*tr, *ca, alpha=0.4)
    with pytest.raises(ValueError, match="integer class indices"):
        cb.fit_sdm(*tr, ca[0], ca[1].astype(np.float32), ca[2])
    gen = lambda noise, cond=None: (noise, 1)
    conf = lambda x, c: jnp.ones(x.shape[0])
    kw = dict(shape=(4, 2), threshold=0.5)
    with pytest.raises(ValueError, match="1 <= n_min <= n_max"):
        cb.adaptive_best_of_n(jax.random.key(0), gen, CLOSE, conf, n_min=8, n_max=4, **kw)
    with pytest.raises(ValueError, match="1 <= n_min <= n_max"):
        cb.adaptive_best_of_n(jax.random.key(0), gen, CLOSE, conf, n_min=0, n_max=4, **kw)
    with pytest.raises(ValueError, match="rank ensemble"):
        cb.adaptive_best_of_n(jax.random.key(0), gen, V.rank_ensemble([CLOSE]), conf, n_min=1,
                              n_max=4, **kw)
    with pytest.raises(ValueError, match=r"confidence_fn returned shape \(1,\)"):
        cb.adaptive_best_of_n(jax.random.key(0), gen, CLOSE, lambda x, c: jnp.ones(1), n_min=1,
                              n_max=4, **kw)
    with pytest.raises(ValueError, match="finite"):
        cb.adaptive_best_of_n(jax.random.key(0), gen, CLOSE, conf, n_min=1, n_max=4,
                              shape=(4, 2), threshold=float("nan"))
