"""The registered guidance methods against their equations: classifier-free variants (interval,
rescale, scheduled) and autoguidance; each is the unguided model at its neutral scale."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import guidance, inference
from diffjax.core import processes
from diffjax.guidance import cfg_variants

NULL = 3
CTX = guidance.Context(null_label=NULL)


def den(params, x, sigma, cond, **_):
    """A label-dependent 'network': params * x / (1 + sigma^2) + (label + 1) * (1 + sigma)."""
    s = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), (x.shape[0],)).reshape((-1,) + (1,) * (x.ndim - 1))
    lab = cond["label"].astype(x.dtype).reshape(s.shape)
    return params * x / (1.0 + s ** 2) + (lab + 1.0) * (1.0 + s) * jnp.cos(x)


D = lambda x, s, c: den(1.0, x, s, c)
X = jnp.linspace(-2, 2, 4 * 6).reshape(4, 6)
LABELS = {"label": jnp.array([0, 1, 2, 0])}


def parts(sigma):
    c = D(X, sigma, LABELS)
    u = D(X, sigma, {"label": jnp.full((4,), NULL)})
    return c, u


def guided(section, sigma, state=None, static=None):
    sec = guidance.resolve(section)
    static_, vals = guidance.split(sec, static)
    method = guidance.get(sec["name"])
    fields = {k: sec[k] for k, _ in method.fields}
    if method.prepare is not None:        # bypass the identity short-circuit: the transform itself
        return method.make(D, CTX, static, state, **fields)(X, sigma, LABELS)
    return method.make(D, CTX, **fields)(X, sigma, LABELS)


@pytest.mark.parametrize("name", ["classifier_free", "interval", "rescale", "scheduled"])
def test_neutral_scale_is_the_conditional_model(name):
    for sigma in (0.1, 1.0, 3.0):
        c, _ = parts(sigma)
        np.testing.assert_allclose(guided({"name": name, "scale": 1.0}, sigma), c, rtol=1e-6,
                                   atol=1e-6)
        static, _ = guidance.split(guidance.resolve({"name": name, "scale": 1.0}))
        assert guidance.apply(D, static, {}, CTX) is D          # and the registry skips it


def test_interval_guides_inside_and_is_the_conditional_model_outside():
    sec = {"name": "interval", "scale": 4.0, "sigma_lo": 0.5, "sigma_hi": 2.0}
    for sigma in (0.2, 0.5, 2.5):                                     # outside (lo excluded)
        np.testing.assert_array_equal(guided(sec, sigma), parts(sigma)[0])
    for sigma in (0.51, 1.0, 2.0):                                    # inside (hi included)
        c, u = parts(sigma)
        np.testing.assert_allclose(guided(sec, sigma), u + 4.0 * (c - u), rtol=1e-6)


def test_rescale_matches_its_equation_in_eps_space_and_phi_zero_is_cfg():
    sigma, w = 1.5, 5.0
    c, u = parts(sigma)
    cfg = u + w * (c - u)
    np.testing.assert_allclose(guided({"name": "rescale", "scale": w, "phi": 0.0}, sigma), cfg,
                               rtol=1e-5, atol=1e-5)
    eps_c, eps_g = (X - c) / sigma, (X - cfg) / sigma
    r = eps_c.std(axis=1, keepdims=True) / eps_g.std(axis=1, keepdims=True)
    eps = 0.7 * eps_g * r + 0.3 * eps_g
    np.testing.assert_allclose(guided({"name": "rescale", "scale": w, "phi": 0.7}, sigma),
                               X - sigma * eps, rtol=1e-5, atol=1e-5)
    full = guided({"name": "rescale", "scale": w, "phi": 1.0, "space": "x0"}, sigma)
    np.testing.assert_allclose(full.std(axis=1), c.std(axis=1), rtol=1e-5)   # phi 1: c's std


def test_scheduled_scale_follows_the_noise_level():
    w, lo, hi = 3.0, 0.01, 10.0
    for schedule, f in (("constant", lambda u: 1.0), ("linear", lambda u: u),
                        ("linear_rev", lambda u: 1 - u), ("sine", lambda u: np.sin(np.pi * u))):
        for sigma in (0.01, 0.1, 1.0, 10.0):
            u_pos = (np.log(sigma) - np.log(lo)) / (np.log(hi) - np.log(lo))
            c, u = parts(sigma)
            want = u + (1 + (w - 1) * f(u_pos)) * (c - u)
            got = guided({"name": "scheduled", "scale": w, "sigma_min": lo, "sigma_max": hi,
                          "schedule": schedule}, sigma)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unknown schedule 'cosine'; expected one of constant"):
        guided({"name": "scheduled", "scale": 2.0, "schedule": "cosine"}, 1.0)


def weak_den(params, x, sigma, cond, **_):
    return den(params, x, sigma, cond) * 0.5 + 0.1


def test_autoguidance_is_its_equation_one_at_w_1_and_cfg_for_an_unconditional_guide():
    sigma = 0.7
    d1, d0 = D(X, sigma, LABELS), weak_den(0.8, X, sigma, LABELS)
    for w in (1.0, 2.5):
        got = guided({"name": "auto", "scale": w}, sigma, state=0.8, static=weak_den)
        np.testing.assert_allclose(got, d0 + w * (d1 - d0), rtol=1e-6)
    np.testing.assert_allclose(guided({"name": "auto", "scale": 1.0}, sigma, 0.8, weak_den), d1,
                               rtol=1e-6)
    # D0 = D1: invariant to w (exactly)
    same = lambda p, x, s, c, **_: den(p, x, s, c)
    np.testing.assert_array_equal(guided({"name": "auto", "scale": 7.0}, sigma, 1.0, same), d1)
    # D0 = the unconditional model: classifier-free guidance
    uncond = lambda p, x, s, c, **_: den(p, x, s, {"label": jnp.full_like(c["label"], NULL)})
    c, u = parts(sigma)
    np.testing.assert_allclose(guided({"name": "auto", "scale": 3.0}, sigma, 1.0, uncond),
                               u + 3.0 * (c - u), rtol=1e-6)


def test_autoguidance_without_its_weak_run_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="needs the weak model's run: --guidance.weak_workdir"):
        guidance.prepare(guidance.resolve({"name": "auto", "scale": 2.0}), run=None)
    with pytest.raises(ValueError, match="is not a diffjax training workdir"):
        guidance.prepare(guidance.resolve({"name": "auto", "scale": 2.0,
                                           "weak_workdir": str(tmp_path)}), run=None)


def test_autoguidance_scale_does_not_recompile():
    proc = processes.get("edm")
    sec = guidance.resolve({"name": "auto", "scale": 2.0, "weak_workdir": "unused"})
    static, _ = guidance.split(sec, weak_den)
    prog = inference.build(den, proc, sampler="euler", steps=3, spacing="karras", batch=4,
                           example_shape=(6,), guidance=static, null_label=NULL)
    labels = jnp.array([0, 1, 2, 0], jnp.int32)
    outs = [prog(jnp.float32(1.0), jax.random.key(0), labels, 0, {"scale": jnp.float32(w)},
                 guidance_state=jnp.float32(p)) for w, p in ((2.0, 0.8), (3.0, 0.8), (3.0, 0.5))]
    assert prog.fn._cache_size() == 1
    assert not np.allclose(outs[0], outs[1]) and not np.allclose(outs[1], outs[2])
    assert cfg_variants.SCHEDULES[0] == "constant"


def test_an_interval_or_schedule_that_cannot_work_on_the_grid_is_refused():
    sig = np.asarray([80.0, 10.0, 1.0, 0.1, 0.0])
    guidance.check(guidance.resolve({"name": "interval", "scale": 2.0, "sigma_lo": 0.5,
                                     "sigma_hi": 5.0}), sig)                 # holds sigma = 1
    with pytest.raises(ValueError, match=r"\(2, 5\] holds none of the sampling grid's noise "
                                         r"levels \(0.1 .. 80\)"):
        guidance.check(guidance.resolve({"name": "interval", "scale": 2.0, "sigma_lo": 2.0,
                                         "sigma_hi": 5.0}), sig)
    with pytest.raises(ValueError, match=r"sigma_lo \(5\) must be below sigma_hi \(1\)"):
        guidance.check(guidance.resolve({"name": "interval", "scale": 2.0, "sigma_lo": 5.0,
                                         "sigma_hi": 1.0}), sig)
    with pytest.raises(ValueError, match="need 0 < sigma_min < sigma_max"):
        guidance.check(guidance.resolve({"name": "scheduled", "scale": 2.0, "sigma_min": 3.0,
                                         "sigma_max": 1.0}), sig)
    # at the neutral scale nothing is applied, so nothing is refused
    guidance.check(guidance.resolve({"name": "interval", "scale": 1.0, "sigma_lo": 2.0,
                                     "sigma_hi": 5.0}), sig)
