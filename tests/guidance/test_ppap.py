"""PPAP (guidance/ppap.py, training/ppap_objective.py): expert routing, experts that start as the
base classifier, the per-sigma expert, and a tiny end-to-end run (teacher -> data-free experts ->
guided draws) whose frozen base stays the teacher's."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import guidance, inference
from diffjax.guidance import ppap
from diffjax.models import registry
from tests.training.util import run_cli


def _classifier():
    m = registry.build_model(registry.get_preset("classifier_relu16"))
    x = jax.random.normal(jax.random.key(0), (4, 16, 16, 1))
    return m, m.init(jax.random.key(1), x)["params"], x


def test_routing_uses_inclusive_bounds_like_theirs():
    edges = np.array([0, 200, 400, 600, 800, 1000], np.float32)
    np.testing.assert_array_equal(ppap.route(jnp.array([0, 199, 200, 201, 999, 1000.0]), edges),
                                  [0, 0, 0, 1, 4, 4])
    b = ppap.bounds(4, 0.002, 80.0)
    np.testing.assert_allclose(np.diff(np.log(b)), np.log(80 / 0.002) / 4, rtol=1e-6)
    with pytest.raises(ValueError, match="0 < sigma_min < sigma_max"):
        ppap.bounds(3, 1.0, 0.5)


def test_every_expert_starts_as_the_base_and_only_experts_train():
    m, base, x = _classifier()
    tree = ppap.init_experts(jax.random.key(2), base, 3, rank=4)
    want = m.apply({"params": base}, x)
    for i in range(3):
        np.testing.assert_array_equal(m.apply({"params": ppap.expert(tree, i, 4.0)}, x), want)
    mask = ppap.trainable(tree)
    assert not any(jax.tree.leaves(mask["base"])) and all(jax.tree.leaves(mask["experts"]))
    assert "head/kernel" not in tree["experts"]["lora"] and "head/bias" not in tree["experts"]["free"]
    assert "res_0_0/conv1/kernel" in tree["experts"]["lora"]
    assert "res_0_0/norm1/scale" in tree["experts"]["free"]


def test_the_expert_of_each_sigma_is_used_per_example_and_per_step():
    m, base, x = _classifier()
    tree = ppap.init_experts(jax.random.key(2), base, 3, rank=2)
    # make the experts differ: expert i's head input is scaled by its own norm_out scale
    tree["experts"]["free"]["norm_out/scale"] = (tree["experts"]["free"]["norm_out/scale"]
                                                 * jnp.array([1.0, 2.0, 3.0])[:, None])
    apply = lambda p, z: m.apply({"params": p}, z)
    edges = ppap.bounds(3, 0.01, 10.0)
    sig = jnp.array([0.02, 0.5, 5.0, 0.02])
    per = ppap.expert_logits(apply, tree, x, sig, edges, 4.0)
    for b, s in enumerate(sig):
        one = ppap.expert_logits(apply, tree, x, s, edges, 4.0)          # the scalar path
        np.testing.assert_allclose(per[b], one[b], rtol=1e-5, atol=1e-6)
        i = int(ppap.route(s, edges))
        np.testing.assert_allclose(one, apply(ppap.expert(tree, i, 4.0), x), rtol=1e-6)
    assert not np.allclose(per[0], ppap.expert_logits(apply, tree, x, 5.0, edges, 4.0)[0])


def test_scale_zero_is_the_model_and_a_missing_experts_run_says_how_to_train_it(tmp_path):
    D = lambda x, s, c: x * 0.5
    static, _ = guidance.split(guidance.resolve({"name": "ppap", "scale": 0.0}))
    assert guidance.apply(D, static, {}, guidance.Context(null_label=10)) is D
    with pytest.raises(ValueError, match="configs/digits_ppap.py"):
        guidance.prepare(guidance.resolve({"name": "ppap", "scale": 2.0}), run=None)


SMALL = ["--config.total_steps=3", "--config.log_every=1", "--config.checkpoint.every=3",
         "--config.data.resolution=8", "--config.batch_size=10"]


def test_data_free_experts_train_from_the_teacher_and_guide_a_run(tmp_path):
    """A 3-step teacher, 3 steps of 5 experts on 'generated' images, then guided draws."""
    teacher, experts = str(tmp_path / "clean"), str(tmp_path / "ppap")
    p = run_cli("train", "--config", "configs/digits_clean_classifier.py", "--workdir", teacher,
                *SMALL)
    assert p.returncode == 0, p.stderr[-3000:]
    gen = str(tmp_path / "gen.npz")
    rng = np.random.default_rng(0)
    np.savez(gen, x=rng.uniform(-1, 1, (40, 8, 8, 1)).astype(np.float32),
             label=np.zeros(40, np.int32))                      # as diffjax sample --npz writes
    p = run_cli("train", "--config", "configs/digits_ppap.py", "--workdir", experts,
                f"--config.objective.teacher_workdir={teacher}", f"--config.data.path={gen}",
                *SMALL)
    assert p.returncode == 0, p.stderr[-3000:]
    t = inference.load(teacher, params="params")
    e = inference.load(experts, params="params")
    for a, b in zip(jax.tree.leaves(t.params["params"]), jax.tree.leaves(e.params["params"]["base"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))     # the base is frozen
    moved = [float(jnp.max(jnp.abs(ad["b"]))) for ad in e.params["params"]["experts"]["lora"].values()]
    assert max(moved) > 0                                               # B left zero: it trained
    # guide a (stand-in) run of the same shape and classes with the experts
    sec = guidance.resolve({"name": "ppap", "scale": 2.0, "experts_workdir": experts})
    static, state = guidance.prepare(sec, t)
    D = lambda x, s, c: 0.5 * x
    Dg = guidance.apply(D, static, guidance.traced_values(sec), guidance.Context(null_label=10),
                        state)
    x = jnp.asarray(rng.normal(size=(4, 8, 8, 1)), jnp.float32)
    out = jax.jit(Dg)(x, jnp.float32(0.7), {"label": jnp.arange(4)})
    assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))
    assert float(jnp.max(jnp.abs(out - D(x, 0.7, None)))) > 0
    p = run_cli("train", "--config", "configs/digits_ppap.py", "--workdir", str(tmp_path / "x"),
                f"--config.data.path={gen}", *SMALL)
    assert p.returncode != 0 and "config.objective.teacher_workdir" in p.stderr


def test_the_sampling_program_does_not_recompile_for_a_new_scale_or_new_experts():
    from diffjax.core import processes
    m, base, _ = _classifier()
    tree = ppap.init_experts(jax.random.key(2), base, 3, rank=2)
    apply = lambda p, z: m.apply({"params": p}, z)
    static = guidance.split(guidance.resolve({"name": "ppap", "scale": 1.0}),
                            (apply, tuple(ppap.bounds(3, 0.002, 80.0)), 4.0, 10, 0.5))[0]
    den = lambda params, x, sigma, cond, **_: params * x / (1 + sigma ** 2)
    prog = inference.build(den, processes.get("edm"), sampler="euler", steps=3, spacing="karras",
                           batch=2, example_shape=(16, 16, 1), guidance=static, null_label=10)
    labels = jnp.array([3, 7], jnp.int32)
    other = jax.tree.map(lambda a: a * 1.5, tree)
    outs = [prog(jnp.float32(1.0), jax.random.key(0), labels, 0, {"scale": jnp.float32(s)}, None, t)
            for s, t in ((1.0, tree), (4.0, tree), (1.0, other))]
    assert prog.fn._cache_size() == 1
    assert all(not np.allclose(outs[0], o) for o in outs[1:])
