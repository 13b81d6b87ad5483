"""Scan over layers and rematerialization (issue 18): for the same (converted) params the scanned
and the unrolled model give equal outputs, intermediates and gradients; every remat policy leaves
values and gradients unchanged and the parameter paths as they were; the layout conversion is
lossless. (That remat lowers the memory is measured on the TPU compile: tests/preflight/test_scale.py;
XLA:CPU's buffer assignment does not show it.)"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.models import build_model, remat, scan
from tests.models import util

LABELS = jnp.array([0, 3, 9, 10])
SCANNED = {  # preset -> overrides giving every scan at least 2 steps where the family allows
    "dit_tiny": dict(depth=3),
    "dit_tiny_tdln": dict(depth=3),
    "pixart_tiny": dict(depth=3),
    "dico_tiny": dict(depths=(2, 1, 1, 1, 3)),
    "dimr_tiny": dict(num_blocks=(1, 4)),
}
REMAT_FAMILIES = ("unet_tiny16", "dit_tiny", "pixart_tiny", "dico_tiny", "dimr_tiny")
slow = pytest.mark.slow


def _default_dit(presets):
    """dit_tiny in the default suite, the other families as slow tests (each compiles its own
    forward and backward passes in both forms: ~15-45 s on 2 cores)."""
    return [p if p == "dit_tiny" else pytest.param(p, marks=slow) for p in presets]


def _pair(preset, **extra):
    kw = {"num_classes": 10, **SCANNED.get(preset, {}), **extra}
    cfg = util.config(preset, **kw)
    unrolled = build_model(cfg)
    cfg.scan_layers = True
    return unrolled, build_model(cfg)


def _close(a, b, tol=2e-5):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), atol=tol, rtol=tol)


@pytest.mark.parametrize("preset", _default_dit(SCANNED))
def test_scanned_equals_unrolled_outputs_and_gradients(preset):
    unrolled, scanned = _pair(preset)
    shape = util.TINY[preset]
    pu = util.random_tree(util.shapes(unrolled, shape))["params"]
    ps = scan.stack(pu, scanned.scan_layout())
    # the stacked tree is exactly what the scanned module initialises
    want = util.shapes(scanned, shape)["params"]
    assert jax.tree.structure(want) == jax.tree.structure(ps)
    assert jax.tree.map(lambda a: a.shape, want) == jax.tree.map(lambda a: a.shape, ps)
    x, t, _ = util.inputs(preset)
    fu, fs = util.apply_fn(unrolled), util.apply_fn(scanned)
    _close(fu({"params": pu}, x, t, LABELS), fs({"params": ps}, x, t, LABELS))
    _close(fu({"params": pu}, x, t, LABELS, return_intermediates=True),
           fs({"params": ps}, x, t, LABELS, return_intermediates=True))

    def grads(m, p):
        return jax.grad(lambda p: jnp.mean(m.apply({"params": p}, x, t, LABELS) ** 2))(p)

    gu, gs = jax.jit(grads, static_argnums=0)(unrolled, pu), jax.jit(grads, static_argnums=0)(
        scanned, ps)
    _close(scan.stack(gu, scanned.scan_layout()), gs, tol=1e-4)
    assert float(max(jnp.abs(g).max() for g in jax.tree.leaves(gs))) > 0


@pytest.mark.parametrize("preset", list(SCANNED))
def test_layout_conversion_is_lossless(preset):
    unrolled, scanned = _pair(preset)
    pu = util.random_tree(util.shapes(unrolled, util.TINY[preset]))["params"]
    ps = scan.to_model(pu, scanned)
    assert scan.is_stacked(ps, scanned.scan_layout())
    back = scan.to_model(ps, unrolled)
    assert jax.tree.structure(back) == jax.tree.structure(pu)
    assert all(jax.tree.leaves(jax.tree.map(jnp.array_equal, back, pu)))
    assert scan.to_model(pu, unrolled) is pu            # already in the wanted layout


def test_stack_names_what_is_missing():
    unrolled, scanned = _pair("dit_tiny")
    pu = dict(util.random_tree(util.shapes(unrolled, util.TINY["dit_tiny"]))["params"])
    del pu["block_1"]
    with pytest.raises(ValueError, match=r"blocks \[1\] lack it"):
        scan.stack(pu, scanned.scan_layout())
    with pytest.raises(ValueError, match="no stacked parameters under blocks/block"):
        scan.unstack(pu, scanned.scan_layout())


@pytest.mark.parametrize("patience", [False, pytest.param(True, marks=slow)])
def test_scanned_early_exit_matches_unrolled(patience):
    unrolled, scanned = _pair("dit_tiny", depth=4, early_exit=True, exit_patience=patience)
    shape = util.TINY["dit_tiny"]
    pu = util.random_tree(util.shapes(unrolled, shape))["params"]
    ps = scan.stack(pu, scanned.scan_layout())
    x, t, _ = util.inputs("dit_tiny")
    _, _, confs = unrolled.apply({"params": pu}, x, t, LABELS, return_confidences=True)
    _close(confs, scanned.apply({"params": ps}, x, t, LABELS, return_confidences=True)[2])
    means = sorted(float(jnp.mean(c)) for c in confs[:-1])
    thresholds = [-1.0, 2.0] + [(a + b) / 2 for a, b in zip(means, means[1:])]
    layers = set()
    for thr in thresholds:
        run = lambda m, p: m.apply({"params": p}, x, t, LABELS, exit_threshold=thr,
                                   mutable=["intermediates"])
        (ou, vu), (os_, vs) = run(unrolled, pu), run(scanned, ps)
        _close(ou, os_)
        assert int(vu["intermediates"]["exit_layer"][0]) == int(vs["intermediates"]["exit_layer"][0])
        layers.add(int(vs["intermediates"]["exit_layer"][0]))
    assert len(layers) >= 2                  # the thresholds exercise different exit layers


@pytest.mark.parametrize("preset", _default_dit(REMAT_FAMILIES))
def test_remat_keeps_params_values_and_gradients(preset):
    cfg = util.config(preset, num_classes=10)
    plain = build_model(cfg)
    shape = util.TINY[preset]
    p = util.random_tree(util.shapes(plain, shape))["params"]
    x, t, _ = util.inputs(preset)

    def grads(m, p):
        return jax.value_and_grad(lambda p: jnp.mean(m.apply({"params": p}, x, t, LABELS) ** 2))(p)

    ref = jax.jit(grads, static_argnums=0)(plain, p)
    for policy in ("full", "dots_with_no_batch_dims_saveable"):
        cfg.remat = policy
        m = build_model(cfg)
        assert jax.tree.structure(util.shapes(m, shape)) == jax.tree.structure(
            util.shapes(plain, shape))
        _close(ref, jax.jit(grads, static_argnums=0)(m, p), tol=1e-5)


def test_remat_with_scan_matches_and_unknown_policy_is_named():
    unrolled, scanned = _pair("dit_tiny", remat="dots_saveable")
    p = util.random_tree(util.shapes(unrolled, util.TINY["dit_tiny"]))["params"]
    x, t, _ = util.inputs("dit_tiny")
    _close(unrolled.apply({"params": p}, x, t, LABELS),
           scanned.apply({"params": scan.stack(p, scanned.scan_layout())}, x, t, LABELS))
    bad = build_model(util.config("dit_tiny", remat="everything"))
    with pytest.raises(ValueError, match="unknown model remat 'everything'.*full"):
        util.shapes(bad, util.TINY["dit_tiny"])
    assert remat.policy("full") is None and remat.policy("dots_saveable") is not None


# ---- end to end: the trainer runs the scanned, rematerialized form; a run loads in either layout --
@pytest.mark.slow
@pytest.mark.ci
def test_scanned_remat_run_trains_resumes_and_loads_unrolled(tmp_path):
    import copy

    from diffjax import inference
    from diffjax.training import trainer
    from tests.training.util import load_config

    c = load_config("digits_dit")
    c.data.resolution = 8
    c.model.update(dict(input_shape=(8, 8, 1), hidden_size=32, depth=3, num_heads=2,
                        scan_layers=True, remat="full"))
    c.batch_size, c.total_steps, c.log_every = 8, 2, 1
    c.optim.warmup_steps = 1
    c.checkpoint.every = 2
    c.sample.num, c.eval.at_end = 0, False
    w = str(tmp_path / "run")
    trainer.train(c, w, show_progress=False)
    c4 = copy.deepcopy(c)
    c4.total_steps = 4
    trainer.train(c4, w, show_progress=False)                 # resumes from step 2
    run = inference.load(w, params="params")
    assert run.step == 4 and "blocks" in run.params["params"]
    flat = copy.deepcopy(run.config)
    flat.model.scan_layers, flat.model.remat = False, "none"
    other = inference.load(w, config=flat, params="params")
    assert "block_2" in other.params["params"] and "blocks" not in other.params["params"]
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
    sig = jnp.full((4,), 1.3)
    cond = {"label": jnp.array([0, 1, 2, 10])}
    a = run.den(run.params["params"], x, sig, cond)
    b = other.den(other.params["params"], x, sig, cond)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    assert float(jnp.std(a - x)) > 0                          # trained: not the identity
