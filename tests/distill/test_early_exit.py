"""DeeDiff / AdaDiff early exit (models/dit.py ``early_exit``; distill/early_exit.py): the exit path
against the full network, the exit rule, the loss terms against NumPy, where the gradients go, that
skipped blocks are not executed, the parameterization frame, the teacher copy and the guidance
method."""
import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import guidance
from diffjax.core import denoisers, processes
from diffjax.distill import early_exit as ee
from diffjax.models import build_model, get_preset
from diffjax.models.dit import ConfidenceHead, DiTBlock
from tests.models.util import FastJit, random_tree

DEPTH, B, SHAPE = 4, 3, (8, 8, 1)
LABELS = jnp.array([0, 3, 10])    # 10: the null class


@functools.lru_cache(maxsize=None)
def model(**overrides):
    cfg = get_preset("dit_tiny")
    cfg.update(dict(hidden_size=32, num_heads=2, depth=DEPTH, num_classes=10, early_exit=True,
                    **overrides))
    return build_model(cfg)


@functools.lru_cache(maxsize=None)
def variables(seed=1, uem_bias=None):
    """Random (non-zero-init) variables; ``uem_bias`` sets each UEM's bias to a constant (the
    logit of that layer's confidence, shifted by the random weights' small term)."""
    m = model()
    shapes = jax.eval_shape(lambda k: m.init(k, jnp.zeros((B,) + SHAPE), jnp.zeros((B,)), LABELS),
                            jax.random.key(0))
    v = random_tree(shapes, seed)
    if uem_bias is not None:
        p = dict(v["params"])
        for i, b in enumerate(uem_bias):
            lin = p[f"uem_{i}"]["linear"]
            p[f"uem_{i}"] = {"linear": {"kernel": 0.3 * lin["kernel"],
                                        "bias": jnp.full_like(lin["bias"], b)}}
        v = {"params": p}
    return v


def inputs(seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return jax.random.normal(k1, (B,) + SHAPE), jax.random.uniform(k2, (B,), minval=-1.5, maxval=1.0)


@functools.lru_cache(maxsize=None)
def apply(m):
    return FastJit(lambda v, x, t, **kw: m.apply(v, x, t, LABELS, **kw),
                   static=("return_confidences",))


@functools.lru_cache(maxsize=None)
def exit_apply(m):
    """(out, exit layer) of the early-exit path, the threshold traced."""
    def f(v, x, t, thr):
        out, st = m.apply(v, x, t, LABELS, exit_threshold=thr, mutable=["intermediates"])
        return out, st["intermediates"]["exit_layer"][0]
    return FastJit(f)


def layer_means(v, x, t):
    """Mean confidence of each layer over the whole (B, H, W, C) map (the full path's UEMs)."""
    _, preds, confs = apply(model())(v, x, t, return_confidences=True)
    return np.array([float(jnp.mean(c)) for c in confs]), preds


# ---- the exit path ------------------------------------------------------------------------------
@pytest.mark.parametrize("thr", [1.0, 1.5, 1e9])
def test_never_exit_threshold_is_the_full_network_bit_exact(thr):
    v, (x, t) = variables(), inputs()
    full = apply(model())(v, x, t)
    out, layer = exit_apply(model())(v, x, t, jnp.float32(thr))
    assert int(layer) == DEPTH
    assert jnp.array_equal(out, full)


def test_saturated_confidences_still_never_exit_at_one():
    # every confidence sigmoid(40) == 1.0 in float32: the mean is 1.0, not > 1.0
    v, (x, t) = variables(uem_bias=(40.0,) * DEPTH), inputs()
    means, _ = layer_means(v, x, t)
    assert np.all(means == 1.0)
    out, layer = exit_apply(model())(v, x, t, jnp.float32(1.0))
    assert int(layer) == DEPTH and jnp.array_equal(out, apply(model())(v, x, t))


def test_threshold_below_every_confidence_exits_at_the_first_layer():
    v, (x, t) = variables(), inputs()
    _, preds = layer_means(v, x, t)
    out, layer = exit_apply(model())(v, x, t, jnp.float32(-1.0))
    assert int(layer) == 1
    np.testing.assert_allclose(out, preds[0], rtol=1e-6, atol=1e-6)
    assert not np.allclose(out, preds[-1], atol=1e-3)


def test_patience_exits_the_second_time_in_the_first_half():
    m = model(exit_patience=True)
    v, (x, t) = variables(), inputs()
    _, preds = layer_means(v, x, t)
    out, layer = exit_apply(m)(v, x, t, jnp.float32(-1.0))
    assert int(layer) == 2
    np.testing.assert_allclose(out, preds[1], rtol=1e-6, atol=1e-6)
    # first half (blocks 1, 2): one hit at block 1 is remembered, block 2's miss does not exit;
    # block 3 (second half) exits at once
    v = variables(uem_bias=(3.0, -3.0, 3.0, -3.0))
    means, preds = layer_means(v, x, t)
    thr = jnp.float32(0.5)
    assert means[0] > 0.5 > means[1] and means[2] > 0.5
    assert int(exit_apply(m)(v, x, t, thr)[1]) == 3
    assert int(exit_apply(model())(v, x, t, thr)[1]) == 1


def test_exit_layer_is_the_first_confident_layer_and_monotone_in_the_threshold():
    # layer means ~ (0.62, 0.27, 0.82, 0.5): not monotone over the layers
    v, (x, t) = variables(uem_bias=(0.5, -1.0, 1.5, 0.0)), inputs()
    means, preds = layer_means(v, x, t)
    layers = []
    thresholds = np.linspace(-0.1, 1.1, 25)
    for thr in thresholds:
        out, layer = exit_apply(model())(v, x, t, jnp.float32(thr))
        hit = [i for i in range(DEPTH - 1) if means[i] > thr]
        want = hit[0] + 1 if hit else DEPTH
        assert int(layer) == want, (thr, means)
        np.testing.assert_allclose(out, preds[want - 1], rtol=1e-5, atol=1e-5)
        layers.append(int(layer))
    # later exits for higher confidence thresholds (= earlier for higher tau = 1 - thr)
    assert all(a <= b for a, b in zip(layers, layers[1:])), layers
    assert len(set(layers)) >= 3, layers


def test_the_exit_is_one_decision_for_the_whole_batch():
    v, (x, t) = variables(uem_bias=(0.5, -1.0, 1.5, 0.0)), inputs()
    means, preds = layer_means(v, x, t)
    out, layer = exit_apply(model())(v, x, t, jnp.float32(means[0] - 1e-3))
    assert int(layer) == 1
    np.testing.assert_allclose(out, preds[0], rtol=1e-5, atol=1e-5)   # every row from layer 1


def test_skipped_blocks_and_their_uems_are_not_executed():
    """Count every block and UEM call that executes, with a debug callback inside the call (it
    is inside the skipped nn.cond branch when the block is skipped)."""
    ran = []

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if isinstance(context.module, (DiTBlock, ConfidenceHead)) and \
                context.method_name == "__call__":
            jax.debug.callback(lambda _, n=context.module.name: ran.append(n), out.sum())
        return out

    m, v, (x, t) = model(), variables(), inputs()
    f = lambda v, x, t, thr: m.apply(v, x, t, LABELS, exit_threshold=thr)
    # the optimised program keeps one data-dependent conditional per skippable block (XLA did not
    # turn them into selects, which would compute both branches)
    plain = jax.jit(f).lower(v, x, t, jnp.float32(0.0)).compile().as_text()
    assert len(re.findall(r" conditional\(", plain)) == DEPTH - 1
    with nn.intercept_methods(interceptor):   # a new function: jit must trace it again
        compiled = jax.jit(lambda *a: f(*a)).lower(v, x, t, jnp.float32(0.0)).compile()
    for thr, blocks in ((-1.0, 1), (2.0, DEPTH)):
        ran.clear()
        jax.block_until_ready(compiled(v, x, t, jnp.float32(thr)))
        jax.effects_barrier()
        uems = min(blocks, DEPTH - 1)        # the last layer never tests
        assert sorted(ran) == sorted([f"block_{i}" for i in range(blocks)] +
                                     [f"uem_{i}" for i in range(uems)]), (thr, ran)


def test_the_exit_path_is_refused_where_it_cannot_work():
    plain = build_model(get_preset("dit_tiny"))
    x, t = inputs()
    x3 = jnp.repeat(x, 3, axis=-1)
    v = jax.eval_shape(lambda k: plain.init(k, x3, t), jax.random.key(0))
    trace = lambda m, v, x, **kw: jax.eval_shape(lambda v: m.apply(v, x, t, LABELS, **kw), v)
    with pytest.raises(ValueError, match="early_exit field"):
        trace(plain, v, x3, exit_threshold=0.5)
    with pytest.raises(ValueError, match="early_exit field"):
        trace(plain, v, x3, return_confidences=True)
    with pytest.raises(ValueError, match="inference path"):
        trace(model(), variables(), x, exit_threshold=0.5, train=True)
    with pytest.raises(ValueError, match="scalar"):
        trace(model(), variables(), x, exit_threshold=jnp.ones((B,)))


def test_confidences_are_detached_per_pixel_maps_and_uems_are_new_parameters():
    v, (x, t) = variables(), inputs()
    out, preds, confs = apply(model())(v, x, t, return_confidences=True)
    assert len(preds) == len(confs) == DEPTH and jnp.array_equal(preds[-1], out)
    assert all(c.shape == x.shape and float(c.min()) > 0 and float(c.max()) < 1 for c in confs)
    assert sorted(k for k in v["params"] if k.startswith("uem_")) == [f"uem_{i}"
                                                                      for i in range(DEPTH)]


# ---- the loss -----------------------------------------------------------------------------------
def numpy_terms(preds, confs, target):
    """The verified card's equations (AdaDiff sde.mos / mos_lte / mos_layer_wise), in NumPy."""
    L = len(preds)
    mos = lambda a: (a ** 2).reshape(a.shape[0], -1).mean(1)
    simple = mos(target - preds[-1])
    conf = sum(mos(confs[i] - (1 - np.tanh(np.abs(preds[i] - target)))) for i in range(L)) / L
    cbar = np.array([c.mean() for c in confs])
    w = cbar / cbar.sum()
    layer = sum(w[i] * mos(target - preds[i]) for i in range(L))
    return simple, conf, layer, w


def random_terms(seed=0, L=5, shape=(4, 6, 6, 2)):
    rng = np.random.RandomState(seed)
    target = rng.randn(*shape).astype(np.float32)
    preds = [target + rng.randn(*shape).astype(np.float32) * s for s in np.linspace(2, 0.1, L)]
    confs = [rng.uniform(0.05, 0.95, shape).astype(np.float32) for _ in range(L)]
    return preds, confs, target


def test_loss_terms_match_numpy():
    preds, confs, target = random_terms()
    got = ee.deediff_terms([jnp.asarray(p) for p in preds], [jnp.asarray(c) for c in confs],
                           jnp.asarray(target))
    simple, conf, layer, w = numpy_terms(preds, confs, target)
    np.testing.assert_allclose(got["simple"], simple, rtol=1e-5)
    np.testing.assert_allclose(got["confidence"], conf, rtol=1e-5)
    np.testing.assert_allclose(got["layerwise"], layer, rtol=1e-5)
    np.testing.assert_allclose(got["per_example"], simple + conf + layer, rtol=1e-5)
    np.testing.assert_allclose(got["weights"], w, rtol=1e-5)
    np.testing.assert_allclose(float(jnp.sum(got["weights"])), 1.0, rtol=1e-6)


def test_layer_weights_are_not_detached_and_the_confidence_target_is():
    preds, confs, target = random_terms(seed=1)
    preds, confs, target = ([jnp.asarray(p) for p in preds], [jnp.asarray(c) for c in confs],
                            jnp.asarray(target))
    g_conf = jax.grad(lambda cs: jnp.mean(ee.deediff_terms(preds, cs, target)["layerwise"]))(confs)
    # d mean_b L_UAL / d c_k = (M_k - sum_i w_i M_i) / (S n), M_i = mean_b mse_i, S = sum_j cbar_j
    _, _, _, w = numpy_terms([np.asarray(p) for p in preds], [np.asarray(c) for c in confs],
                             np.asarray(target))
    M = np.array([np.mean((np.asarray(target) - np.asarray(p)) ** 2) for p in preds])
    S = sum(float(jnp.mean(c)) for c in confs)
    n = confs[0].size
    for k, g in enumerate(g_conf):
        np.testing.assert_allclose(g, np.full(g.shape, (M[k] - w @ M) / (S * n)), rtol=1e-4,
                                   atol=1e-12)
    assert float(jnp.abs(g_conf[0]).max()) > 0
    # the pseudo ground truth 1 - tanh|F_i - F*| is detached: no gradient to the predictions
    g_pred = jax.grad(lambda ps: jnp.mean(ee.deediff_terms(ps, confs, target)["confidence"]))(preds)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in g_pred)


@functools.lru_cache(maxsize=None)
def _term_grads():
    """Gradients of each loss term (mean over the batch) w.r.t. the network's parameters."""
    m, v, (x, t) = model(), variables(), inputs()
    target = jax.random.normal(jax.random.key(5), x.shape)

    def grads(params):
        def term(params, name):
            _, preds, confs = m.apply({"params": params}, x, t, LABELS, return_confidences=True)
            return jnp.mean(ee.deediff_terms(preds, confs, target)[name])
        return {n: jax.grad(term)(params, n) for n in ("confidence", "layerwise", "simple")}

    return FastJit(grads)(v["params"])


def _norm(tree):
    return float(sum(jnp.sum(a ** 2) for a in jax.tree.leaves(tree)))


def test_the_backbone_gets_no_gradient_from_the_confidence_mse():
    g = _term_grads()["confidence"]
    backbone = {k: v for k, v in g.items() if not k.startswith("uem_")}
    assert _norm(backbone) == 0.0
    assert all(_norm(g[f"uem_{i}"]) > 0 for i in range(DEPTH))


def test_the_layer_wise_loss_trains_uems_through_the_weights_and_the_backbone():
    g = _term_grads()
    assert all(_norm(g["layerwise"][f"uem_{i}"]) > 0 for i in range(DEPTH))
    assert _norm({k: v for k, v in g["layerwise"].items() if k.startswith("block_")}) > 0
    assert all(_norm(g["simple"][f"uem_{i}"]) == 0 for i in range(DEPTH))


@pytest.mark.parametrize("param", ["edm", "eps"])
def test_network_io_is_the_denoisers_frame(param):
    """c_skip x + c_out F (edm) / (x_t - sigma F) / alpha (eps) with F from network_io's input is
    the wrapped denoiser's x0_hat; and F* is what F should equal (x0_hat = x0 exactly at F = F*)."""
    m, v = model(), variables()
    process = processes.get("edm") if param == "edm" else processes.get("vp_linear")
    den = denoisers.from_network(lambda p, *a, **k: m.apply(p, *a, **k), process, param)

    def check(x0, t, key):
        x_t, eps = process.perturb(key, x0, t)
        x_in, label, target = ee.network_io(param, process, t, x_t, x0, eps)
        F = m.apply(v, x_in, label, LABELS)
        x = x_t / denoisers.bcast(process.alpha(t), x_t)
        sigma = process.sigma_tilde(t)
        x0_hat = den(v, x, sigma, {"label": LABELS})
        a, s = denoisers.bcast(process.alpha(t), x0), denoisers.bcast(process.sigma(t), x0)
        if param == "edm":
            sd, sg = 0.5, denoisers.bcast(sigma, x0)
            c_skip, c_out = sd ** 2 / (sg ** 2 + sd ** 2), sg * sd / jnp.sqrt(sg ** 2 + sd ** 2)
            rebuild = lambda f: c_skip * x + c_out * f
        else:
            rebuild = lambda f: (x_t - s * f) / a
        return rebuild(F), x0_hat, rebuild(target), a

    x0 = jax.random.normal(jax.random.key(1), (B,) + SHAPE)
    t = jnp.array([0.3, 2.0, 20.0]) if param == "edm" else jnp.array([0.05, 0.4, 0.9])
    from_F, x0_hat, from_target, a = FastJit(check)(x0, t, jax.random.key(2))
    # compared in x_t's units: eps's x0 = (x_t - sigma F) / alpha divides the float32 round-off of
    # the denoiser's t -> sigma -> t round trip by alpha (0.017 at t = 0.9: 1.7e-3 in x0 units)
    np.testing.assert_allclose(a * from_F, a * x0_hat, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(from_target, x0, rtol=1e-4, atol=1e-4)


# ---- the teacher copy, the student rule, the guidance method -------------------------------------
def test_start_from_copies_the_teacher_and_keeps_fresh_uems():
    student = variables(seed=1)["params"]
    teacher = {k: v for k, v in variables(seed=2)["params"].items() if not k.startswith("uem_")}
    out = ee.start_from(student, teacher)
    assert jax.tree.structure(out) == jax.tree.structure(student)
    for k, v in out.items():
        want = student[k] if k.startswith("uem_") else teacher[k]
        assert all(jnp.array_equal(a, b) for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(want)))
    bad = dict(teacher, block_0=jax.tree.map(lambda a: a[..., :1], teacher["block_0"]))
    with pytest.raises(ValueError, match=r"block_0.*shape"):
        ee.start_from(student, bad)
    with pytest.raises(ValueError, match="final_layer.*not in the teacher"):
        ee.start_from(student, {k: v for k, v in teacher.items() if k != "final_layer"})
    with pytest.raises(ValueError, match="no place"):
        ee.start_from(student, dict(teacher, extra={"w": jnp.ones(2)}))
    with pytest.raises(ValueError, match="no confidence modules"):
        ee.start_from(teacher, teacher)


def _objective(monkeypatch, teacher_params, **config):
    """objectives.build of 'deediff' for the tiny model, the teacher's weights given (no run)."""
    from diffjax.training import objectives
    from diffjax.training import step as step_lib
    from tests.training.util import load_config

    monkeypatch.setattr(ee, "load_teacher", lambda fields, m, shape: teacher_params)
    c = load_config("distill_deediff")
    c.model.update(dict(input_shape=SHAPE, hidden_size=32, num_heads=2, depth=DEPTH,
                        early_exit=True))
    for k, v in config.items():
        sec, key = k.split(".")
        c[sec][key] = v
    m = build_model(c.model)
    return m, step_lib.build_objective(c, m, SHAPE)


def test_the_objective_starts_from_the_teacher_and_trains_the_uems(monkeypatch):
    teacher = {k: v for k, v in variables(seed=2)["params"].items() if not k.startswith("uem_")}
    m, obj = _objective(monkeypatch, teacher)
    fresh = variables(seed=1)["params"]
    params = obj.init_params(jax.random.key(0), fresh)
    assert jnp.array_equal(params["block_0"]["mlp"]["fc1"]["kernel"],
                           teacher["block_0"]["mlp"]["fc1"]["kernel"])
    assert jnp.array_equal(params["uem_1"]["linear"]["kernel"], fresh["uem_1"]["linear"]["kernel"])
    batch = {"x": inputs()[0], "label": LABELS}
    (loss, aux), g = FastJit(jax.value_and_grad(lambda p: obj.loss(p, None, batch,
                                                                   jax.random.key(3)),
                                                has_aux=True))(params)
    terms = aux["metrics"]
    np.testing.assert_allclose(loss, terms["simple"] + terms["confidence"] + terms["layerwise"],
                               rtol=1e-5)
    assert np.isfinite(float(loss)) and aux["loss_per_example"].shape == (B,)
    assert all(_norm(g[f"uem_{i}"]) > 0 for i in range(DEPTH)) and _norm(g["block_0"]) > 0
    assert obj.trainable is None
    _, frozen = _objective(monkeypatch, teacher, **{"objective.freeze_backbone": True})
    mask = frozen.trainable(params)
    assert all(jax.tree.leaves(mask["uem_0"])) and not any(jax.tree.leaves(mask["block_0"]))
    with pytest.raises(ValueError, match="native"):
        _objective(monkeypatch, teacher, **{"diffusion.weighting": "min_snr"})
    with pytest.raises(ValueError, match="early_exit=True"):
        _objective(monkeypatch, teacher, **{"model.early_exit": False})
    with pytest.raises(ValueError, match="exit_patience"):
        _objective(monkeypatch, teacher, **{"objective.exit_patience": True})


def test_student_rule_adds_confidence_modules_to_a_dit_only():
    import ml_collections

    dit = ml_collections.ConfigDict({"model": {"name": "dit"}})
    assert ee._student(dit, {"exit_patience": False}) == {"model.early_exit": True,
                                                          "model.exit_patience": False}
    with pytest.raises(ValueError, match="implemented for DiT"):
        ee._student(ml_collections.ConfigDict({"model": {"name": "unet"}}), {"exit_patience": False})


class _Run:
    """What the guidance method's prepare reads of an inference Run."""
    def __init__(self, m, num_classes=10):
        import ml_collections

        self.config = ml_collections.ConfigDict(
            {"model": {"name": "dit", "early_exit": getattr(m, "early_exit", False)}})
        self.num_classes = num_classes


def test_guidance_method_passes_the_traced_threshold_to_the_network():
    sec = guidance.resolve({"name": "early_exit", "threshold": 0.7, "scale": 3.0})
    static, traced = guidance.split(sec)
    assert sorted(traced) == ["scale", "threshold"]
    with pytest.raises(ValueError, match="'dit' model has none"):
        guidance.prepare(sec, _Run(build_model(get_preset("dit_tiny"))))
    with pytest.raises(ValueError, match="unconditional"):
        guidance.prepare(sec, _Run(model(), num_classes=0))
    m, v, (x, t) = model(), variables(), inputs()
    den = denoisers.from_network(lambda p, *a, **k: m.apply(p, *a, **k), processes.get("edm"),
                                 "edm")
    D = denoisers.bind(den, v)
    sigma = jnp.array([0.5, 1.0, 3.0])
    null = jnp.full_like(LABELS, 10)
    cond = lambda lab, thr: {"label": lab, "exit_threshold": thr}
    for scale in (1.0, 3.0):
        sec = guidance.resolve({"name": "early_exit", "threshold": 0.7, "scale": scale})
        static, state = guidance.prepare(sec, _Run(m))

        def both(vals):
            got = guidance.apply(D, static, vals, guidance.Context(null_label=10), state)(
                x, sigma, {"label": LABELS})
            thr = vals["threshold"]
            if scale == 1.0:
                return got, D(x, sigma, cond(LABELS, thr))
            # classifier-free: the conditional and null rows exit together, one batch of 2B
            out = D(jnp.concatenate([x, x]), jnp.concatenate([sigma, sigma]),
                    cond(jnp.concatenate([LABELS, null]), thr))
            return got, out[B:] + scale * (out[:B] - out[B:])

        f = FastJit(both)
        outs = {}
        for thr in (-1.0, 2.0):
            got, want = f(guidance.traced_values(dict(sec, threshold=thr)))
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
            outs[thr] = got
        assert not np.allclose(outs[-1.0], outs[2.0], atol=1e-4)   # the threshold is live


# ---- end to end: train a tiny base, fine-tune it with deediff, sample with early exit ----------
@pytest.mark.slow
def test_deediff_fine_tunes_a_trained_dit_and_samples_with_early_exit(tmp_path):
    from diffjax import inference
    from diffjax.distill import student
    from diffjax.training import trainer
    from tests.training.util import load_config

    def shrink(c, steps):
        c.data.resolution = 8
        c.model.update(dict(input_shape=(8, 8, 1), hidden_size=32, depth=3, num_heads=2))
        c.batch_size, c.total_steps, c.log_every = 8, steps, 1
        c.optim.warmup_steps = 1
        c.checkpoint.every = steps
        c.sample.num, c.eval.at_end = 0, False
        return c

    base, fine = str(tmp_path / "base"), str(tmp_path / "deediff")
    trainer.train(shrink(load_config("digits_dit"), 3), base, show_progress=False)
    cfg = student.config_for(shrink(load_config("distill_deediff"), 2), base)
    assert cfg.model.early_exit and cfg.model.hidden_size == 32
    assert cfg.objective.teacher_workdir == base
    trainer.train(cfg, fine, show_progress=False)
    run, teacher = inference.load(fine), inference.load(base)
    assert run.model.early_exit and sorted(k for k in run.params["power_0.1"]
                                           if k.startswith("uem_")) == ["uem_0", "uem_1", "uem_2"]
    draw = lambda r, g: inference.generate(r, 4, sampler="euler", steps=3, guidance=g)
    never = draw(run, {"name": "early_exit", "threshold": 2.0, "scale": 3.0})
    np.testing.assert_allclose(never, draw(run, 3.0), atol=1e-5)
    first = draw(run, {"name": "early_exit", "threshold": -1.0, "scale": 3.0})
    # (3 + 2 steps from adaLN-Zero's identity blocks: exiting at block 1 changes little, but it does)
    assert np.all(np.isfinite(first)) and np.abs(first - never).max() > 1e-6
    with pytest.raises(ValueError, match="has none"):
        draw(teacher, {"name": "early_exit", "threshold": 0.5})
