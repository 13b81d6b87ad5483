"""Learning-rate schedule, EMA profiles (incl. EDM2's power function) and gradient accumulation."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from diffjax.training import ema, optim


def _optim_cfg(**kw):
    c = dict(lr=1.0, schedule="cosine", warmup_steps=10, end_lr_factor=0.1, b1=0.9, b2=0.999,
             eps=1e-8, weight_decay=0.0, grad_clip=0.0, accum_steps=1)
    c.update(kw)
    return ml_collections.ConfigDict(c)


def test_schedule_warmup_then_cosine():
    s = optim.make_schedule(_optim_cfg(), total_steps=110)
    np.testing.assert_allclose([s(0), s(5), s(10)], [0.0, 0.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(s(60), 0.1 + 0.9 * 0.5, atol=1e-6)   # half-way through the cosine
    np.testing.assert_allclose(s(110), 0.1, atol=1e-6)
    c = optim.make_schedule(_optim_cfg(schedule="constant", warmup_steps=0), 100)
    assert float(c(0)) == float(c(99)) == 1.0
    with pytest.raises(ValueError, match="config.optim.schedule"):
        optim.make_schedule(_optim_cfg(schedule="linear"), 100)


def test_power_ema_exponent_matches_edm2():
    # EDM2 (Karras et al. 2024), Sec. 3.1: sigma_rel 0.05 <-> gamma 16.97, 0.10 <-> gamma 6.94.
    assert ema.power_exponent(0.05) == pytest.approx(16.97, abs=0.01)
    assert ema.power_exponent(0.10) == pytest.approx(6.94, abs=0.01)
    g = ema.power_exponent(0.1)
    assert np.sqrt((g + 1) / ((g + 2) ** 2 * (g + 3))) == pytest.approx(0.1, rel=1e-9)


def test_power_ema_is_the_power_weighted_average():
    # With beta_k = (1 - 1/k)^(g + 1), ema_K = sum_k w_k p_k with w_k proportional to k^g
    # (exactly: w_k = prod ... ; here we check against the recursion run in float64 numpy).
    g = ema.power_exponent(0.1)
    ps = np.random.default_rng(0).normal(size=50)
    ref = ps[0]
    for k, p in enumerate(ps[1:], start=1):
        b = (1 - 1 / k) ** (g + 1)
        ref = b * ref + (1 - b) * p
    avg = ema.init({"w": jnp.float32(ps[0])}, ["power_0.1"])
    for k, p in enumerate(ps[1:], start=1):
        avg = ema.update(avg, {"w": jnp.float32(p)}, k)
    assert float(avg["power_0.1"]["w"]) == pytest.approx(ref, rel=1e-4)
    assert float(ema.beta("power_0.1", 1)) == 0.0  # the first average is the current params


def test_decay_ema_warmup_and_names():
    assert float(ema.beta("decay_0.999", 1)) == pytest.approx(2 / 11)
    assert float(ema.beta("decay_0.999", 10 ** 6)) == pytest.approx(0.999)
    cfg = ml_collections.ConfigDict(dict(decays=(0.999, 0.9999), power_stds=(0.05,)))
    assert ema.names(cfg) == ["decay_0.999", "decay_0.9999", "power_0.05"]
    with pytest.raises(ValueError, match="config.ema.power_stds"):
        ema.names(ml_collections.ConfigDict(dict(decays=(), power_stds=(0.5,))))


def test_multisteps_equals_one_step_on_the_mean_gradient():
    params = {"w": jnp.arange(4.0)}
    grads = [{"w": jnp.array([1.0, -2.0, 3.0, 0.5])}, {"w": jnp.array([0.0, 4.0, -1.0, 1.5])}]
    tx1, _ = optim.make_optimizer(_optim_cfg(warmup_steps=0, grad_clip=1.0), 10)
    tx2, _ = optim.make_optimizer(_optim_cfg(warmup_steps=0, grad_clip=1.0, accum_steps=2), 10)
    mean = jax.tree.map(lambda a, b: (a + b) / 2, *grads)
    u1, _ = tx1.update(mean, tx1.init(params), params)
    s2 = tx2.init(params)
    u_a, s2 = tx2.update(grads[0], s2, params)
    assert not bool(optim.has_updated(s2))
    np.testing.assert_array_equal(u_a["w"], 0.0)
    u_b, s2 = tx2.update(grads[1], s2, params)
    assert bool(optim.has_updated(s2))
    assert int(optim.optimizer_step(s2, 2, 2)) == 1
    np.testing.assert_allclose(u_b["w"], u1["w"], rtol=1e-6)
