"""The distillation trainers end to end on a tiny teacher run: each objective's student config,
its extra state (teacher, target or fake-score network) checkpointed and resumed bit for bit after
SIGTERM, the progressive halvings swapping teachers, the same steps on 8 simulated devices as on
one, the preflight counting the teacher, and the CLI's one-line errors."""
import json
import os
import signal

import jax
import numpy as np
import pytest

from diffjax.distill import student
from diffjax.training import checkpoint, trainer
from diffjax.training import step as step_lib
from tests.training.util import load_config, run_cli, run_python, tiny_config

OBJECTIVES = ("progressive", "guided", "consistency", "sim")
TINY = {"batch_size": 8, "total_steps": 4, "log_every": 1, "checkpoint.every": 2,
        "sample.num": 0, "eval.at_end": False}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny trained teacher run (2 steps of tests.training.util.tiny_config)."""
    w = str(tmp_path_factory.mktemp("teacher") / "run")
    trainer.train(tiny_config(total_steps=2), w, show_progress=False)
    return w


@pytest.fixture(scope="module")
def config_only_teacher(tmp_path_factory):
    """A teacher workdir with the files a student config is built from (config.json, run.json, a
    checkpoint directory) and no weights: for the tests that never load them."""
    from diffjax import inference

    w = str(tmp_path_factory.mktemp("config_teacher") / "run")
    inference.save_run_info(w, tiny_config(total_steps=2), (8, 8, 1), 10)
    os.makedirs(os.path.join(w, "checkpoints", "2"))
    return w


def student_config(name, teacher_workdir, **overrides):
    c = load_config(f"distill_{name}")
    for key, value in {**TINY, **overrides}.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    if name == "progressive":
        c.objective.start_steps = 4          # 2 halvings of 2 steps: 4 -> 2 -> 1
    return student.config_for(c, teacher_workdir)


def _state(workdir, config, step=None):
    """The train state saved in ``workdir`` at ``step`` (default: the latest), on host."""
    from diffjax.data import registry as data_registry
    from diffjax.models import registry as model_registry
    from diffjax.training import sharding

    source = data_registry.get_source(config.data)
    model = model_registry.build_model(config.model)
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1}, jax.devices()[:1])
    ts = step_lib.make_train_step(config, model, mesh, example_shape=source[0]["x"].shape)
    with checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True) as ckpt:
        return jax.device_get(ckpt.restore(ts.abstract_state, step=step))


def _sigterm_resume_is_bit_exact(name, teacher, tmp_path):
    config = student_config(name, teacher)
    ref, cut = str(tmp_path / "ref"), str(tmp_path / "cut")
    trainer.train(config, ref, show_progress=False)

    def sigterm_at_3(step, state, m):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    first = trainer.train(config, cut, callbacks=[sigterm_at_3], show_progress=False)
    assert first["preempted"] and first["step"] == 3
    second = trainer.train(config, cut, show_progress=False)
    assert second["start_step"] == 3 and second["step"] == 4
    a, b = _state(ref, config), _state(cut, config)
    assert a.extra is not None and jax.tree.structure(a.extra) == jax.tree.structure(b.extra)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):       # params, opt, extra: all
        np.testing.assert_array_equal(x, y)
    return a


@pytest.mark.slow
@pytest.mark.ci
def test_progressive_resume_is_bit_exact_and_each_halving_swaps_the_teacher(teacher, tmp_path):
    final = _sigterm_resume_is_bit_exact("progressive", teacher, tmp_path)
    assert int(final.extra["step"]) == 4
    # at step 2 (the end of the first halving) the teacher became the 2-step student; the last
    # halving keeps it (no swap at the end of training)
    at2 = _state(str(tmp_path / "ref"), student_config("progressive", teacher), 2)
    for t, p in zip(jax.tree.leaves(final.extra["teacher"]), jax.tree.leaves(at2.params)):
        np.testing.assert_array_equal(t, p)
    assert any(not np.array_equal(t, p) for t, p in
               zip(jax.tree.leaves(final.extra["teacher"]), jax.tree.leaves(final.params)))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["guided", "consistency",
                                  pytest.param("sim", marks=pytest.mark.ci)])
def test_resume_after_sigterm_is_bit_exact(name, teacher, tmp_path):
    final = _sigterm_resume_is_bit_exact(name, teacher, tmp_path)
    assert "teacher" in final.extra


def test_student_configs_take_the_teachers_sections_and_their_rules(config_only_teacher):
    teacher = config_only_teacher
    t = load_config("digits")
    for name in OBJECTIVES:
        c = student_config(name, teacher)
        tc = tiny_config(total_steps=2)
        assert c.data.to_dict() == tc.data.to_dict()
        assert c.objective.teacher_workdir == os.path.abspath(teacher)
        assert c.model.model_channels == tc.model.model_channels != t.model.model_channels
    assert student_config("guided", teacher).model.guidance_embed is True
    assert student_config("consistency", teacher).diffusion.parameterization == "consistency"
    assert student_config("sim", teacher).diffusion.process_kwargs.sigma_max == 2.5
    pd = student_config("progressive", teacher)
    assert (pd.sample.sampler, pd.sample.steps, pd.sample.spacing) == ("ddim", 1, "nested")


@pytest.mark.slow
@pytest.mark.ci
def test_distilled_students_sample_from_the_cli(teacher, tmp_path):
    """A guided student samples with --guidance W through its w input; a consistency student in
    one step; the draw settings line says so."""
    for name in ("guided", "consistency"):
        w = str(tmp_path / name)
        trainer.train(student_config(name, teacher, total_steps=2), w, show_progress=False)
        p = run_cli("sample", "--workdir", w, "--num", "4", "--out", str(tmp_path / f"{name}.png"),
                    *(["--guidance", "3"] if name == "guided" else []))
        assert p.returncode == 0, p.stderr[-2000:]
        out = json.loads(p.stdout.strip().splitlines()[-1])
        if name == "guided":
            assert out["guidance"] == {"name": "guidance_input", "scale": 3.0}
        else:
            assert (out["sampler"], out["steps"]) == ("consistency", 1)


def test_distill_command_errors_are_one_line(config_only_teacher, tmp_path):
    teacher = config_only_teacher
    cases = [
        (["--config", "configs/distill_progressive.py", "--workdir", str(tmp_path / "a")],
         "needs --teacher WORKDIR"),
        (["--config", "configs/distill_progressive.py", "--teacher", str(tmp_path / "none"),
          "--workdir", str(tmp_path / "b")], "no such directory"),
        (["--config", "configs/digits.py", "--teacher", teacher, "--workdir", str(tmp_path / "c")],
         "is not a distillation objective"),
        (["--config", "configs/distill_progressive.py", "--teacher", teacher, "--workdir",
          str(tmp_path / "d"), "--config.objective.start_steps=6"], "must be powers of two"),
    ]
    for args, want in cases:
        p = run_cli("distill", *args)
        assert p.returncode == 1 and want in p.stderr, p.stderr[-2000:]
        assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


SHARDED = """
import json, sys, jax, numpy as np
sys.path.insert(0, '.')
from tests.distill import test_trainers as t
from diffjax.data import pipeline, registry as data_registry
from diffjax.models import registry as model_registry
from diffjax.training import sharding, step as step_lib
teacher = sys.argv[1]
out = {}
for name in sys.argv[2].split(","):
    for tag, n, mesh in (("1dev", 1, None), ("dp4_fsdp2", 8, {"data": 4, "fsdp": 2})):
        config = t.student_config(name, teacher, **{"sharding.min_size": 0})
        source = data_registry.get_source(config.data)
        model = model_registry.build_model(config.model)
        m = sharding.make_mesh(mesh or {"data": 1, "fsdp": 1}, jax.devices()[:n])
        ts = step_lib.make_train_step(config, model, m, example_shape=source[0]["x"].shape)
        state = ts.jit_init()(jax.random.key(0))
        step = ts.jit_step()
        it = pipeline.make_iterator(source, ts.micro_batch, seed=0)
        for _ in range(2):
            state, met = step(state, sharding.to_global(next(it), ts.batch_sharding))
        sharded = sum(any(p is not None for p in x.sharding.spec)
                      for x in jax.tree.leaves(state.extra))
        flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.device_get(
            (state.params, state.extra)))])
        out[f"{name}/{tag}"] = {"state": flat.tolist(), "loss": float(met["loss"]),
                                "extra_sharded": int(sharded)}
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.parametrize("names", [pytest.param(("progressive", "sim"), marks=pytest.mark.ci),
                                   ("guided", "consistency")])
def test_sharded_equals_single_device_with_the_extra_state_sharded(teacher, names):
    """progressive: the teacher swap; sim: an auxiliary network with its own optimizer state."""
    p = run_python(SHARDED, devices=8, args=(teacher, ",".join(names)), timeout=1200)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.split("RESULT ", 1)[1])
    for name in names:
        one, many = out[f"{name}/1dev"], out[f"{name}/dp4_fsdp2"]
        assert many["extra_sharded"] > 0 and one["extra_sharded"] == 0, name
        a, b = np.asarray(one["state"]), np.asarray(many["state"])
        # SIM's Adam steps with beta1 = 0 move a weight by about +-lr when its gradient is near 0,
        # so a reduction-order difference can flip one: allow two such steps of the fake's lr
        tol = 2 * 2 * 1e-4 if name == "sim" else 1e-5 * np.max(np.abs(a))
        assert np.max(np.abs(a - b)) < tol, (name, np.max(np.abs(a - b)))
        assert abs(one["loss"] - many["loss"]) < 1e-4 * max(abs(one["loss"]), 1), name


@pytest.mark.slow
@pytest.mark.ci
def test_preflight_counts_the_teachers_state(teacher):
    from diffjax.models import registry as model_registry
    from diffjax.preflight import report

    def config(name):   # the preflight reads model.input_shape; the tiny teacher trains at 8x8
        c = student_config(name, teacher)
        c.model.input_shape = (8, 8, 1)
        return c

    pd, sim = (report.run(config(n), jax.devices()[:1], sample=False) for n in ("progressive", "sim"))
    c = config("progressive")
    shapes = step_lib.param_shapes(c, model_registry.build_model(c.model), (8, 8, 1))
    p_bytes = 4 * sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    assert any(k.startswith("extra/teacher/") for k in pd.state_specs)
    assert any(k.startswith("extra/fake/") for k in sim.state_specs)
    # params + Adam's two moments + the teacher; SIM adds the fake score and its two moments
    assert 4 * p_bytes <= pd.state_bytes_per_device < 4 * p_bytes + 4096
    assert 7 * p_bytes <= sim.state_bytes_per_device < 7 * p_bytes + 4096
