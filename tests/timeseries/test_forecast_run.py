"""A series run end to end: configs/timeseries_sunspots.py shrunk to seconds trains through the
shared trainer, forecasts its held-out windows (scale 0 = the unguided model's draws), the refined
linear forecasts and TSTR run, and diffjax forecast prints the table; its flag mistakes are one
line."""
import json
import os

import numpy as np
import pytest

from tests.training.util import ROOT, run_cli

pytest.importorskip("statsmodels")


def _config():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "ts_config", os.path.join(ROOT, "configs", "timeseries_sunspots.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.model.model_channels = 8
    c.model.channel_mult = (1,)
    c.model.num_head_channels = -1
    c.batch_size = 16
    c.total_steps = 6
    c.log_every = 2
    c.checkpoint.every = 6
    c.optim.warmup_steps = 2
    return c


@pytest.mark.parametrize("args,needle", [
    (["--energy", "l2"], "--energy 'l2'"),
    (["--refine", "hmc"], "--refine 'hmc'"),
    (["--num", "1"], "--num must be at least 2"),
])
def test_forecast_flag_mistakes_are_one_line(tmp_path, args, needle):
    p = run_cli("forecast", "--workdir", str(tmp_path), *args)
    assert p.returncode == 1 and needle in p.stderr and len(p.stderr.strip().splitlines()) == 1, \
        p.stderr


@pytest.mark.slow
@pytest.mark.ci
def test_series_run_trains_forecasts_refines(tmp_path):
    import jax
    import jax.numpy as jnp

    from diffjax import inference
    from diffjax.timeseries import evaluate, forecast, series
    from diffjax.training import trainer

    w = str(tmp_path / "run")
    trainer.train(_config(), w)
    run = inference.load(w)
    assert tuple(run.example_shape) == (56, 1)
    split, season = evaluate.held_out(run)
    assert season == 11 and split.test_context.shape == (4, 44)
    # scale 0: the unguided model's own draws, the same for any energy
    a = forecast.forecast(run, split.test_context, num_samples=4, scale=0.0, steps=4)
    b = forecast.forecast(run, split.test_context, num_samples=4, scale=0.0, energy="mse",
                          steps=4)
    assert a.shape == (4, 4, 12) and np.array_equal(a, b)
    g = forecast.forecast(run, split.test_context, num_samples=4, scale=1.0, steps=4)
    assert np.isfinite(g).all() and np.abs(g - a).max() > 1e-3
    rows = evaluate.evaluate(run, num_samples=4, steps=4, refine="lmc", refine_iters=3)
    assert [r["method"].split(" ")[0] for r in rows] == ["seasonal_naive", "linear", "tsdiff",
                                                          "linear+refine"]
    assert all(np.isfinite(r["ncrps"]) and r["ncrps"] > 0 for r in rows)
    r = forecast.tstr(run, split, num=32, steps=4)
    assert set(r) == {"real", "synthetic"} and r["real"]["mse"] > 0
    # refinement with zero iterations is the identity
    x, _, _ = series.scale_windows(split.train[:3], 44)
    same = forecast.refine(run, x, x, np.ones_like(x), key=jax.random.key(0), iters=0)
    np.testing.assert_array_equal(same, x)
    # the level as tau in process time or as sigma itself: the same refinement
    obs, mask = x, np.concatenate([np.ones_like(x[:, :44]), np.zeros_like(x[:, 44:])], 1)
    by_tau = forecast.refine(run, x, obs, mask, key=jax.random.key(1), iters=2, tau=20.0)
    sig = float(run.process.sigma_tilde(jnp.float32(20.0)))
    by_sigma = forecast.refine(run, x, obs, mask, key=jax.random.key(1), iters=2, sigma=sig)
    np.testing.assert_allclose(by_sigma, by_tau, rtol=1e-6, atol=1e-6)
    assert np.abs(by_tau - x).max() > 0
    with pytest.raises(ValueError, match="outside the run's process time"):
        forecast.refine(run, x, obs, mask, key=jax.random.key(1), tau=1e6)
    p = run_cli("forecast", "--workdir", w, "--num", "4", "--steps", "3", "--refine", "sgd",
                "--refine_iters", "2")
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["series"] == "sunspots" and len(out["rows"]) == 4 and "nCRPS" in p.stderr
    p = run_cli("forecast", "--workdir", w, "--sampler", "nope")
    assert p.returncode == 1 and "nope" in p.stderr
