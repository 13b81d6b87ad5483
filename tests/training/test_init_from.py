"""Fine-tuning from another run's weights (config.init_from, diffjax/training/init_from.py): the
new run's state starts at the source's parameter set exactly (EMAs too), extra leaves keep their
init, mismatches are named, a resume ignores init_from, and configs/finetune.py builds a config
whose params fit the source's."""
import importlib.util
import os

import jax
import numpy as np
import pytest

from diffjax.training import init_from
from tests.training.util import ROOT, tiny_config


def _leaves(tree):
    return [np.asarray(a) for a in jax.tree_util.tree_leaves(tree)]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    from diffjax.training import trainer

    w = str(tmp_path_factory.mktemp("source"))
    trainer.train(tiny_config(), w)
    return w


def test_merge_keeps_extra_leaves_and_names_mismatches():
    f32 = np.float32
    target = {"a": {"kernel": np.zeros((2, 3), f32)}, "lora": {"b": np.ones((4,), f32)}}
    source = {"a": {"kernel": np.full((2, 3), 7.0, f32)}}
    out = init_from.merge(target, source, "here")
    assert np.all(out["a"]["kernel"] == 7.0) and np.all(out["lora"]["b"] == 1.0)
    with pytest.raises(ValueError, match=r"here: the source's parameter \['b'\] has no place"):
        init_from.merge(target, {"b": np.zeros(1)}, "here")
    with pytest.raises(ValueError, match=r"\['a'\]\['kernel'\] has shape \(3, 2\)"):
        init_from.merge(target, {"a": {"kernel": np.zeros((3, 2))}}, "here")
    with pytest.raises(ValueError, match="config.init_from has no field"):
        init_from.section({"init_from": {"workdir": "x", "parms": "y"}})


def test_training_starts_at_the_source_weights_and_resume_ignores_it(source, tmp_path):
    from diffjax import inference
    from diffjax.training import trainer

    src = inference.load(source, params="params")
    want = _leaves(src.params["params"])
    # lr 1e-30 after the start: the fine-tuned run's params stay the source's (to 1e-20), its EMAs
    # too (b a + (1 - b) p of a = p: float32 round-off)
    w = str(tmp_path / "ft")
    cfg = tiny_config(**{"init_from.workdir": source, "init_from.params": "params",
                         "optim.lr": 1e-30, "total_steps": 2, "seed": 5})
    trainer.train(cfg, w)
    ft = inference.load(w, params="all")
    for name, tree in ft.params.items():
        got = _leaves(tree)
        tol = 1e-20 if name == "params" else 1e-6
        assert max(np.abs(a - b).max() for a, b in zip(got, want)) < tol, name
    fresh = str(tmp_path / "fresh")
    trainer.train(tiny_config(**{"optim.lr": 1e-30, "total_steps": 2, "seed": 5}), fresh)
    other = _leaves(inference.load(fresh, params="params").params["params"])
    assert max(np.abs(a - b).max() for a, b in zip(other, want)) > 1e-2
    # a resume reads its own checkpoint: init_from may then point anywhere (even nowhere)
    cfg = tiny_config(**{"init_from.workdir": str(tmp_path / "gone"), "optim.lr": 1e-30,
                         "total_steps": 4, "seed": 5})
    summary = trainer.train(cfg, w)
    assert summary["start_step"] == 2


@pytest.mark.slow
@pytest.mark.ci
def test_refusals_name_the_problem(source, tmp_path):
    from diffjax.training import trainer

    with pytest.raises(ValueError, match="not a diffjax run directory"):
        trainer.train(tiny_config(**{"init_from.workdir": str(tmp_path / "nope")}),
                      str(tmp_path / "a"))
    with pytest.raises(ValueError, match="examples of shape"):
        trainer.train(tiny_config(**{"init_from.workdir": source, "data.resolution": 16}),
                      str(tmp_path / "b"))
    with pytest.raises(ValueError, match="has shape"):
        trainer.train(tiny_config(**{"init_from.workdir": source, "model.model_channels": 16}),
                      str(tmp_path / "c"))
    with pytest.raises(ValueError, match="unknown parameter set 'nope'"):
        trainer.train(tiny_config(**{"init_from.workdir": source, "init_from.params": "nope"}),
                      str(tmp_path / "d"))


def test_finetune_config_copies_the_source(source):
    spec = importlib.util.spec_from_file_location("finetune", os.path.join(ROOT, "configs",
                                                                           "finetune.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from diffjax import inference
    from diffjax.models import registry

    c = mod.get_config(source)
    old = inference.load_config(source)
    assert c.init_from.workdir == os.path.abspath(source)
    assert c.model.to_dict() == old.model.to_dict() and c.diffusion.to_dict() == \
        old.diffusion.to_dict()
    assert c.sample.params == "decay_0.999" and c.optim.lr == 1e-4
    registry.build_model(c.model)                  # the copied model section builds
    with pytest.raises(ValueError, match="needs the source run"):
        mod.get_config(None)
    with pytest.raises(ValueError, match="not a diffjax run directory"):
        mod.get_config(source + "_missing")
