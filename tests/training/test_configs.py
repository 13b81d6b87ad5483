"""Every config builds; the real-scale presets lower (trace + shard, no compile) at full size, and
train end to end only with tiny overrides (slow)."""
import jax
import numpy as np
import pytest

from diffjax.models import registry as model_registry
from diffjax.training import step as step_lib, trainer
from tests.training.util import load_config

CONFIGS = ("digits", "shapes", "toy2d", "cifar10_ddpmpp", "imagenet256_dit_xl2")


@pytest.mark.parametrize("name", CONFIGS)
def test_config_is_complete_and_valid(name):
    c = load_config(name)
    trainer.validate_config(c)
    c.lock()                                  # what the CLI does: typos now fail
    with pytest.raises(AttributeError):
        c.optim.lrr = 1.0
    model_registry.build_model(c.model)       # every model field is known to the registry


@pytest.mark.parametrize("name, shape, params_m", [
    ("cifar10_ddpmpp", (32, 32, 3), (50, 70)),       # DDPM++-sized U-Net, ~56M in EDM
    ("imagenet256_dit_xl2", (32, 32, 4), (670, 680)),  # DiT-XL/2: 675M
])
def test_real_scale_presets_lower_at_full_size(name, shape, params_m):
    c = load_config(name)
    model = model_registry.build_model(c.model)
    mesh = step_lib.make_mesh(c, model, shape)      # the preset's fsdp='auto' resolved
    ts = step_lib.make_train_step(c, model, mesh, example_shape=shape)
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(ts.abstract_state.params))
    assert params_m[0] * 1e6 < n < params_m[1] * 1e6, n
    lowered = ts.jit_step().lower(ts.abstract_state, ts.abstract_batch)   # no memory, no compile
    assert "stablehlo" in lowered.as_text()[:20000] or lowered is not None


def _tiny(name, tmp_path):
    c = load_config(name)
    c.total_steps, c.batch_size, c.log_every = 2, 8, 1
    c.checkpoint.every, c.sample.num, c.eval.at_end = 2, 0, False
    if name == "cifar10_ddpmpp":
        c.model.model_channels, c.model.num_res_blocks, c.model.num_head_channels = 8, 1, -1
        c.data = c.data.__class__(dict(name="shapes", num_examples=64, resolution=16, flip=True))
        c.model.num_classes = 24
    elif name == "imagenet256_dit_xl2":
        c.model.hidden_size, c.model.depth, c.model.num_heads = 32, 1, 2
        c.model.num_classes = 10
        x = np.random.default_rng(0).uniform(-1, 1, (64, 8, 8, 4)).astype(np.float32)
        np.savez(tmp_path / "latents.npz", images=x, labels=np.arange(64) % 10)
        c.data.path = str(tmp_path / "latents.npz")
    elif name == "toy2d":
        c.model.model_channels = 8
    elif name == "shapes":
        c.model.model_channels, c.model.num_head_channels = 8, -1
        c.data.num_examples, c.data.resolution = 64, 16
    return c


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cifar10_ddpmpp", "imagenet256_dit_xl2", "toy2d", "shapes"])
def test_tiny_override_smoke(name, tmp_path):
    summary = trainer.train(_tiny(name, tmp_path), str(tmp_path / "run"))
    assert summary["step"] == 2 and np.isfinite(summary["loss"])
