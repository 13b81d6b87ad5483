"""RADD through the shared trainer: the objective's loss and gradients, the data source, a short
end-to-end run (slow), its loading and sampling as ``diffjax text`` does it."""
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.data import registry as data_registry
from diffjax.discrete import losses, samplers, text_data   # registers 'text' and 'radd'
from diffjax.models import registry as model_registry
from diffjax.training import step as step_lib
from diffjax.training.config import sibling

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "text_radd.py")


def test_text_source_is_real_text_with_a_held_out_split():
    tr = data_registry.get_source({"name": "text", "split": "train", "seq_len": 32})
    te = data_registry.get_source({"name": "text", "split": "test", "seq_len": 32})
    assert len(tr) > 5 * len(te) > 0
    item = tr[0]
    assert item["x"].dtype == np.float32 and item["x"].shape == (32,)
    assert 0 <= item["x"].min() and item["x"].max() < text_data.VOCAB_SIZE
    assert text_data.decode(item["x"]).startswith("the assert statement")
    assert text_data.split_text("test") not in text_data.split_text("train")
    assert text_data.decode(text_data.encode("Hello, World!")) == "hello, world"


@pytest.mark.parametrize("kind", losses.LOSSES)
def test_objective_loss_and_gradients_are_finite(kind):
    c = sibling(CONFIG, "text_radd.py", "quick")
    c.objective.loss = kind
    c.model.seq_len = 16
    model = model_registry.build_model(c.model)
    obj = step_lib.build_objective(c, model, (16,))
    params = model.init(jax.random.key(0), *step_lib.example_inputs(model, (16,)))["params"]
    x = jnp.asarray(text_data.windows("train", 16)[:8], jnp.float32)
    (value, aux), g = jax.value_and_grad(obj.loss, has_aux=True)(params, None, {"x": x},
                                                                 jax.random.key(1))
    assert np.isfinite(float(value)) and aux["per_token"].shape == (8,)
    if kind in ("lambda_dce", "k_dce"):   # (the time-weighted ones are too noisy for 8 rows)
        # a zero-initialised head predicts uniformly: the bound is about log V per token
        assert abs(float(value) - np.log(text_data.VOCAB_SIZE)) < 0.6
    assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree.leaves(g))
    assert float(sum(jnp.sum(leaf ** 2) for leaf in jax.tree.leaves(g))) > 0


def test_radd_objective_refuses_a_denoiser():
    c = sibling(CONFIG, "text_radd.py")
    model = model_registry.build_model(model_registry.get_preset("dit_tiny"))
    with pytest.raises(ValueError, match="token_transformer"):
        step_lib.build_objective(c, model, (16, 16, 3))


def test_token_model_is_time_free_and_accepts_float_or_int_tokens():
    m = model_registry.build_model({"name": "token_transformer", "vocab_size": 5, "seq_len": 8,
                                    "hidden_size": 16, "depth": 1, "num_heads": 2})
    assert m.takes_noise_level is False
    x = jnp.array([[0, 1, 2, 5, 5, 3, 4, 5]])
    p = m.init(jax.random.key(0), x.astype(jnp.float32)[..., None])["params"]
    p = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(1), a.shape), p)
    out = m.apply({"params": p}, x)
    assert out.shape == (1, 8, 5)
    np.testing.assert_allclose(jnp.exp(out).sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(m.apply({"params": p}, x.astype(jnp.float32)), out, rtol=1e-6)


@pytest.mark.slow
@pytest.mark.ci
def test_train_quick_run_then_sample_it(tmp_path):
    from diffjax.cli import text as text_cli
    from diffjax.discrete import run as run_lib
    from diffjax.training import trainer

    c = sibling(CONFIG, "text_radd.py", "quick")
    c.total_steps = 6
    c.checkpoint.every = 6
    summary = trainer.train(c, str(tmp_path), show_progress=False)
    assert summary["step"] == 6 and np.isfinite(summary["loss"])
    r = run_lib.load(str(tmp_path))
    assert (r.vocab, r.seq_len, r.params_name) == (29, 64, "decay_0.999")
    out = text_cli.draw(str(tmp_path), num=2, steps=300, sampler="tau_leaping", cache=True, seed=0)
    assert len(out["samples"]) == 2 and out["nfe"] < 300      # the batch's calls, cached
    assert all(s["nfe"] <= 65 for s in out["samples"])        # one call per state at most
    assert all(len(s["text"]) == 64 and "_" not in s["text"] for s in out["samples"])
    assert set(text_cli.SAMPLER_NAMES) == set(samplers.SAMPLERS)
    nll = run_lib.sequence_nll(r, text_data.windows("test", 64)[:4])
    assert nll.shape == (4,) and np.all(np.isfinite(nll))
    assert sys.modules.get("diffjax.cli.text") is not None

    # the command as a user types it: one line per sample, then the settings as JSON
    from tests.training.util import run_cli
    p = run_cli("text", "--workdir", str(tmp_path), "--num", "2", "--steps", "32", "--seed", "3")
    assert p.returncode == 0, p.stderr[-3000:]
    lines = p.stdout.strip().splitlines()
    res = json.loads(lines[-1])
    assert (res["num"], res["steps"], res["sampler"], res["cache"], res["seed"]) == (
        2, 32, "tau_leaping", True, 3)
    shown = [ln for ln in lines[:-1] if ln.startswith("nfe ")]
    assert len(shown) == 2 and all(len(ln[10:]) == 64 for ln in shown)   # f"nfe {n:4d}  {text}"
    assert res["nfe"] <= 32 and res["nfe_per_sample"] <= 32
    bad = run_cli("text", "--workdir", str(tmp_path), "--sampler", "beam")
    assert bad.returncode != 0 and "unknown --sampler 'beam'" in bad.stderr
    assert "Traceback" not in bad.stderr
    missing = run_cli("text", "--workdir", str(tmp_path / "nope"))
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
