"""diffjax.timeseries metrics, baselines, data and the simulated signals: closed forms and
invariants (CRPS of a Gaussian, the pinball minimiser, MASE of a perfect seasonal series, the
rolling split, mean scaling, Welch's PSD of a sinusoid)."""
import numpy as np
import pytest

from diffjax.timeseries import baselines, metrics, series, signals


def test_crps_of_samples_equals_the_gaussian_closed_form():
    rng = np.random.default_rng(0)
    mu, s = 1.5, 0.7
    y = np.array([0.0, 1.5, 3.0])
    x = mu + s * rng.standard_normal((200_000, 1)) * np.ones((1, 3))
    got = metrics.crps_samples(x, y, axis=0)
    want = metrics.crps_gaussian(mu, s, y)
    np.testing.assert_allclose(got, want, rtol=5e-3)
    # the sorted-sample identity equals the pairwise definition E|X-y| - E|X-X'|/2 exactly
    small = rng.standard_normal((7, 2))
    pair = np.abs(small - y[:2]).mean(0) - 0.5 * np.abs(small[:, None] - small[None]).mean((0, 1))
    np.testing.assert_allclose(metrics.crps_samples(small, y[:2], axis=0), pair, atol=1e-12)
    # a point forecast's CRPS is its absolute error
    assert metrics.crps_samples(np.full((1, 1), 2.0), np.array([0.5]), axis=0)[0] == 1.5


def test_pinball_is_minimised_at_the_quantile():
    rng = np.random.default_rng(1)
    data = rng.standard_normal(2001)
    grid = np.linspace(-3, 3, 6001)
    for q in (0.1, 0.5, 0.9):
        loss = metrics.pinball(q, data[None] - grid[:, None]).mean(1)
        assert abs(grid[loss.argmin()] - np.quantile(data, q)) < 2e-3


def test_mase_and_seasonal_naive():
    t = np.arange(120)
    season = np.sin(2 * np.pi * t / 12) * 5 + 10
    ctx, tgt = season[None, :48], season[None, 48:60]
    sn = baselines.seasonal_naive(ctx, 12, 12)
    np.testing.assert_allclose(sn, tgt, atol=1e-12)       # exact on a purely seasonal series
    assert metrics.mase(sn, tgt, season[:48] + t[:48] * 0.1, 12) < 1e-12
    noisy = tgt + 1.0
    # in-sample seasonal differences of a trend 0.1 per step over 12 steps: 1.2
    assert metrics.mase(noisy, tgt, season[:48] + t[:48] * 0.1, 12) == pytest.approx(1 / 1.2)


def test_linear_baseline_recovers_a_linear_map():
    rng = np.random.default_rng(2)
    c = rng.standard_normal((500, 6))
    w = rng.standard_normal((6, 3))
    y = c @ w + 0.5 + 0.01 * rng.standard_normal((500, 3))
    lin = baselines.fit_linear(c, y, ridge=1e-8)
    np.testing.assert_allclose(lin.weights[:6], w, atol=5e-3)
    np.testing.assert_allclose(lin.resid_std, 0.01, rtol=0.15)
    assert lin.sample(c[:4], 10).shape == (4, 10, 3)


def test_bundled_series_and_the_rolling_split():
    pytest.importorskip("statsmodels")
    for name, n in (("sunspots", 309), ("elnino", 732), ("co2", 2284), ("nile", 100)):
        v, m = series.load_series(name)
        assert v.shape == (n,) and np.isfinite(v).all() and m == series.SEASONS[name]
    v, _ = series.load_series("sunspots")
    sp = series.split_series(v, 44, 12, 4)
    assert sp.train.shape == (309 - 48 - 56 + 1, 56)
    np.testing.assert_array_equal(sp.test_target.reshape(-1), v[-48:])
    np.testing.assert_array_equal(sp.test_context[0], v[-48 - 44:-48])
    assert sp.train[-1, -1] == v[-49]              # no training window sees a test target
    x, loc, sc = series.scale_windows(sp.train, 44, "mean")
    np.testing.assert_allclose(np.abs(x[:, :44, 0]).mean(1), 1.0, rtol=1e-5)
    x, loc, sc = series.scale_windows(sp.train, 44, "standard")
    np.testing.assert_allclose(x[:, :44, 0].mean(1), 0.0, atol=1e-5)
    with pytest.raises(ValueError, match="unknown series"):
        series.load_series("airline")
    with pytest.raises(ValueError, match="cannot give"):
        series.split_series(v[:60], 44, 12, 4)


def test_simulated_signals_carry_their_class_rhythm():
    x, y = signals.simulate(300, classes=3, channels=4, length=128)
    assert x.shape == (300, 128, 4) and np.bincount(y).tolist() == [100, 100, 100]
    p = signals.band_powers(x)
    # each class's power peaks in its own band (theta 6 Hz, alpha 10 Hz, beta 20 Hz)
    for k, band in enumerate(("theta", "alpha", "beta")):
        mine = np.log10(p[band][y == k]).mean()
        others = np.log10(p[band][y != k]).mean()
        assert mine > others + 0.3, (band, mine, others)
    # Welch's PSD of a unit sinusoid integrates to its power 1/2 and peaks at its frequency
    t = np.arange(1024) / signals.FS
    f, psd = signals.welch_psd(np.sin(2 * np.pi * 16 * t)[:, None], nperseg=128)
    assert f[psd[:, 0].argmax()] == 16.0
    assert psd[:, 0].sum() * (f[1] - f[0]) == pytest.approx(0.5, rel=0.02)
    d = signals.band_distance(x[y == 0], x[y == 0])
    assert all(v == 0.0 for v in d.values())
    assert signals.band_distance(x[y == 0], x[y == 2])["beta"] > 0.3
