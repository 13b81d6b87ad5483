"""Denoiser parameterizations, losses, weightings, label dropout, CEP and guidance."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.core import analytic, conditioning, denoisers as Dn, losses as L, processes as P
from diffjax.guidance import classifier_free

MU = jnp.array([0.5, -1.0, 2.0])
SD = jnp.array([0.3, 1.0, 1.5])
D_EXACT = analytic.gaussian_denoiser(MU, SD)


def _exact_network(process, parameterization, sigma_data=0.5):
    """A 'network' whose raw output is the exact target of the parameterization, computed from the
    exact Gaussian denoiser - inverting each parameterization's own input convention."""

    def apply_fn(params, x_in, label, labels=None, context=None, train=False, rngs=None):
        if parameterization == "edm":
            s = jnp.exp(4.0 * label)[:, None]
            c_in = 1 / jnp.sqrt(s ** 2 + sigma_data ** 2)
            x = x_in / c_in
            c_skip = sigma_data ** 2 / (s ** 2 + sigma_data ** 2)
            c_out = s * sigma_data / jnp.sqrt(s ** 2 + sigma_data ** 2)
            return (D_EXACT(x, s[:, 0]) - c_skip * x) / c_out
        if isinstance(process, P.DiscreteVP):
            t = label
        elif isinstance(process, P.VE):
            t = jnp.log(jnp.exp(4 * label) / process.sigma_min) / math.log(
                process.sigma_max / process.sigma_min)
        elif isinstance(process, P.EDM):
            t = jnp.exp(4 * label)
        else:
            t = label / 1000.0
        a = process.alpha(t)[:, None]
        s = process.sigma(t)[:, None]
        x0 = D_EXACT(x_in / a, s[:, 0] / a[:, 0])
        eps = (x_in - a * x0) / s
        return Dn.network_target(parameterization, process, t, x0, eps)

    return apply_fn


@pytest.mark.parametrize("name,param", [("vp_discrete", "eps"), ("vp_linear", "v"),
                                        ("vp_cosine", "x0"), ("flow", "flow"), ("edm", "edm"),
                                        ("ve", "eps"), ("vp_cosine", "v")])
def test_parameterization_wrappers_recover_exact_denoiser(name, param):
    proc = P.get(name)
    den = Dn.from_network(_exact_network(proc, param), proc, param)
    t = jnp.linspace(proc.t_min + 0.1 * (proc.t_max - proc.t_min), proc.t_max * 0.9, 6)
    sig = proc.sigma_tilde(t)
    x = MU + sig[:, None] * jax.random.normal(jax.random.PRNGKey(0), (6, 3))
    np.testing.assert_allclose(np.asarray(den(None, x, sig)), np.asarray(D_EXACT(x, sig)),
                               rtol=2e-4, atol=2e-4)


def test_conversions_are_inverse():
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
    x0 = jax.random.normal(jax.random.PRNGKey(1), (4, 3))
    s = jnp.array([0.1, 1.0, 3.0, 10.0])
    eps = Dn.eps_from_x0(x, s, x0)
    np.testing.assert_allclose(np.asarray(Dn.x0_from_eps(x, s, eps)), np.asarray(x0), rtol=1e-5,
                               atol=1e-5)
    sc = Dn.score_from_x0(x, s, x0)
    np.testing.assert_allclose(np.asarray(Dn.x0_from_score(x, s, sc)), np.asarray(x0), rtol=1e-4,
                               atol=1e-4)
    gmm = analytic.diagonal_mixture([[0.0, 1.0], [2.0, -1.0]], [0.5, 0.7])
    y = jax.random.normal(jax.random.PRNGKey(2), (5, 2))
    np.testing.assert_allclose(np.asarray(Dn.score_from_x0(y, 0.8, gmm.denoise(y, 0.8))),
                               np.asarray(gmm.score(y, 0.8)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,weighting,t_sampler", [
    ("vp_discrete", "snr", "uniform"), ("vp_cosine", "min_snr", "uniform"),
    ("vp_linear", "truncated_snr", "uniform"), ("edm", "edm", "lognormal"),
    ("flow", "uniform", "logit_normal"), ("ve", "uniform", "uniform")])
def test_loss_of_exact_denoiser_is_irreducible_value(name, weighting, t_sampler):
    """With D exact, E[w ||D - x0||^2 / d] = E_t[w(t) mean_d s^2 sig^2 / (s^2 + sig^2)] exactly;
    the batch estimate agrees within 5 standard errors."""
    proc = P.get(name)
    loss_fn = jax.jit(L.make_loss(L.from_denoiser(D_EXACT), proc, weighting=weighting,
                                  t_sampler=t_sampler))
    x0 = MU + SD * jax.random.normal(jax.random.PRNGKey(0), (20000, 3))
    loss, aux = loss_fn(None, {"x": x0}, jax.random.PRNGKey(1))
    sig = aux["sigma"][:, None]
    w = L.weight(weighting, proc, aux["t"])
    analytic_per_ex = w * jnp.mean(SD ** 2 * sig ** 2 / (SD ** 2 + sig ** 2), axis=1)
    se = float(jnp.std(aux["loss_per_example"])) / math.sqrt(20000)
    assert abs(float(loss) - float(jnp.mean(analytic_per_ex))) < 5 * se + 1e-7


@pytest.mark.parametrize("param", ["eps", "v", "flow", "edm", "x0"])
def test_native_weighting_is_plain_mse_of_network_target(param):
    """'native' makes the x0-space loss equal the raw MSE between the network output and its target."""
    proc = P.get({"eps": "vp_cosine", "v": "vp_linear", "flow": "flow", "edm": "edm",
                  "x0": "vp_cosine"}[param])
    W = jax.random.normal(jax.random.PRNGKey(0), (3, 3)) * 0.3

    def apply_fn(params, x, label, labels=None, context=None, train=False, rngs=None):
        return jnp.tanh(x @ params + 0.1 * label[:, None])

    den = Dn.from_network(apply_fn, proc, param)
    loss_fn = L.make_loss(den, proc, weighting="native",
                          t_sampler="lognormal" if param == "edm" else "uniform")
    x0 = MU + SD * jax.random.normal(jax.random.PRNGKey(1), (64, 3))
    key = jax.random.PRNGKey(2)
    loss, aux = loss_fn(W, {"x": x0}, key)
    # recompute by hand: same t and noise draws as make_loss
    k_t, k_n, *_ = jax.random.split(key, 5)
    t = aux["t"]
    x_t, eps = proc.perturb(k_n, x0, t)
    if param == "edm":
        s = proc.sigma_tilde(t)[:, None]
        c_in = 1 / jnp.sqrt(s ** 2 + 0.25)
        c_skip = 0.25 / (s ** 2 + 0.25)
        c_out = s * 0.5 / jnp.sqrt(s ** 2 + 0.25)
        out = apply_fn(W, c_in * x_t, jnp.log(s[:, 0]) / 4)
        target = (x0 - c_skip * x_t) / c_out
    else:
        out = apply_fn(W, x_t, proc.noise_label(t))
        target = Dn.network_target(param, proc, t, x0, eps)
    raw = jnp.mean(jnp.mean((out - target) ** 2, axis=1))
    np.testing.assert_allclose(float(loss), float(raw), rtol=2e-4)


def test_loss_gradients_finite_and_jittable():
    proc = P.get("vp_cosine")

    def apply_fn(params, x, label, labels=None, context=None, train=False, rngs=None):
        h = jnp.tanh(x @ params["w1"] + jnp.sin(label[:, None] / 100.0))
        return h @ params["w2"]

    params = {"w1": jnp.ones((3, 8)) * 0.1, "w2": jnp.ones((8, 3)) * 0.1}
    for param in ["eps", "v", "x0"]:
        loss_fn = L.make_loss(Dn.from_network(apply_fn, proc, param), proc, weighting="min_snr")
        g = jax.jit(jax.grad(lambda p: loss_fn(p, {"x": jnp.ones((16, 3))}, jax.random.PRNGKey(0))[0]))(
            params)
        assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree_util.tree_leaves(g))


def test_lognormal_time_sampler_matches_edm():
    proc = P.get("edm")
    t = L.time_sampler("lognormal", proc)(jax.random.PRNGKey(0), 50000)
    ls = np.log(np.asarray(proc.sigma_tilde(t)))
    assert abs(ls.mean() + 1.2) < 0.03 and abs(ls.std() - 1.2) < 0.03


def test_label_dropout_rate_and_loss_uses_null():
    labels = jnp.arange(20000) % 10
    out = conditioning.drop_labels(jax.random.PRNGKey(0), labels, 0.1, 10)
    frac = float(jnp.mean(out == 10))
    assert abs(frac - 0.1) < 5 * math.sqrt(0.09 / 20000)
    seen = {}

    def D(x, s, cond):
        seen["label"] = cond["label"]
        return x

    loss_fn = L.make_loss(L.from_denoiser(D), P.get("edm"), label_dropout=1.0, null_label=10)
    loss_fn(None, {"x": jnp.ones((4, 2)), "label": jnp.array([1, 2, 3, 4])}, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(np.asarray(seen["label"]), [10, 10, 10, 10])
    with pytest.raises(ValueError, match="null_label"):
        L.make_loss(L.from_denoiser(D), P.get("edm"), label_dropout=0.1)


def test_classifier_free_guidance_combination():
    """D_w = D_null + w (D_c - D_null); w = 1 gives the conditional denoiser."""
    def D(x, s, cond):
        return x * 0.5 + cond["label"][:, None].astype(jnp.float32)

    x = jnp.ones((3, 2))
    cond = {"label": jnp.array([1, 2, 3])}
    g = classifier_free(D, null_label=0, scale=3.0)(x, 1.0, cond)
    want = (x * 0.5) + 3.0 * cond["label"][:, None]
    np.testing.assert_allclose(np.asarray(g), np.asarray(want))
    np.testing.assert_allclose(np.asarray(classifier_free(D, 0, 1.0)(x, 1.0, cond)),
                               np.asarray(D(x, 1.0, cond)))
    with pytest.raises(ValueError, match="label"):
        classifier_free(D, 0, 2.0)(x, 1.0, None)


def test_bad_loss_inputs():
    with pytest.raises(ValueError, match="unknown weighting"):
        L.make_loss(L.from_denoiser(D_EXACT), P.get("edm"), weighting="p2")
    with pytest.raises(ValueError, match="unknown time sampler"):
        L.make_loss(L.from_denoiser(D_EXACT), P.get("edm"), t_sampler="beta")
    with pytest.raises(ValueError, match="unknown parameterization"):
        Dn.from_network(lambda *a, **k: None, P.get("edm"), "score")
    loss_fn = L.make_loss(L.from_denoiser(D_EXACT), P.get("edm"))
    with pytest.raises(ValueError, match="'x'"):
        loss_fn(None, {"image": jnp.ones((2, 3))}, jax.random.PRNGKey(0))
    bad = L.make_loss(L.from_denoiser(lambda x, s, c: x[:, :2]), P.get("edm"))
    with pytest.raises(ValueError, match="shape"):
        bad(None, {"x": jnp.ones((2, 3))}, jax.random.PRNGKey(0))


def test_value_and_grad_in_slices_is_the_batch_gradient():
    """For a mean-over-examples loss without randomness the sliced gradient equals the whole
    batch's; aux comes back per example in batch order; a batch that does not split is an error."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import pytest
    from diffjax.core import losses

    def loss_fn(p, batch, key):
        per = jnp.sum((batch["x"] @ p["w"] + p["b"] - batch["y"]) ** 2, -1) * (1 + batch["label"])
        return jnp.mean(per), {"loss_per_example": per}

    k = jax.random.split(jax.random.key(0), 4)
    p = {"w": jax.random.normal(k[0], (5, 3)), "b": jnp.ones(3)}
    batch = {"x": jax.random.normal(k[1], (12, 5)), "y": jax.random.normal(k[2], (12, 3)),
             "label": jnp.arange(12) % 3}
    (l1, a1), g1 = jax.value_and_grad(loss_fn, has_aux=True)(p, batch, k[3])
    for slices in (1, 3, 4):
        (l2, a2), g2 = jax.jit(losses.value_and_grad_in_slices(loss_fn, slices))(p, batch, k[3])
        np.testing.assert_allclose(l2, l1, rtol=1e-5)
        np.testing.assert_allclose(a2["loss_per_example"], a1["loss_per_example"], rtol=1e-5)
        for u, v in zip(jax.tree.leaves(g2), jax.tree.leaves(g1)):
            np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="does not split into 5"):
        losses.value_and_grad_in_slices(loss_fn, 5)(p, batch, k[3])
    with pytest.raises(ValueError, match="slices"):
        losses.value_and_grad_in_slices(loss_fn, 0)


def test_sliced_diffusion_loss_draws_independent_noise_per_slice():
    """With make_loss, each slice draws its own t (fold_in(key, i)): not one slice's draws repeated."""
    import jax
    import jax.numpy as jnp
    from diffjax.core import analytic, losses, processes

    process = processes.get("edm")
    D = analytic.gaussian_denoiser(mu=0.0, s=1.0)
    loss_fn = losses.make_loss(lambda p, x, s, c=None, **kw: D(x, s, c) + 0 * p, process,
                               parameterization="x0")
    batch = {"x": jax.random.normal(jax.random.key(1), (8, 2))}
    (_, aux), _ = losses.value_and_grad_in_slices(loss_fn, 2)(jnp.float32(0.0), batch,
                                                                 jax.random.key(2))
    t = aux["t"]
    assert t.shape == (8,) and not jnp.allclose(t[:4], t[4:])
