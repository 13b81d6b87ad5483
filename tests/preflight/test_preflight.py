"""Deviceless TPU preflight: fit / no-fit, FSDP scaling, clear errors, and the same shardings as a
real (CPU) run. Tests that compile for TPU skip when libtpu (the 'tpu' extra) is not installed."""
import json
import os
import subprocess
import sys

import pytest

from diffjax import preflight
from diffjax.training.config import base

needs_libtpu = pytest.mark.skipif(
    not preflight.libtpu_available(),
    reason="libtpu not installed: pip install -e '.[tpu]' to compile for deviceless TPU topologies")


def _small_config(batch=16, fsdp=1, **model):
    c = base("dit_tiny", **model)
    c.model.input_shape = (16, 16, 3)
    c.batch_size = batch
    c.mesh.fsdp = fsdp
    c.sample.steps = 4
    c.sample.sampler = "dpmpp_2m"
    c.sharding.min_size = 2 ** 8
    return c


def test_unknown_topology_is_a_clear_error():
    for bad in ["v9:2x2", "garbage", "v5e-2x2", "v5p:4"]:
        with pytest.raises(ValueError, match="unknown TPU topology"):
            preflight.parse(bad)


@needs_libtpu
def test_libtpu_rejects_impossible_slice_clearly():
    with pytest.raises(ValueError, match="libtpu rejected topology 'v5e:3x3'"):
        preflight.devices("v5e:3x3")


@needs_libtpu
def test_small_model_fits_on_v5e_2x2():
    r = preflight.tpu(_small_config(), "v5e:2x2")
    assert r.num_devices == 4 and r.hbm_bytes == 16 * 2 ** 30
    assert r.fits()
    names = [p.name for p in r.programs]
    assert names == ["train_step", "sample_loop"]
    train = r.programs[0]
    assert train.flops > 0 and train.argument_bytes > 0
    d = r.as_dict()
    assert d["programs"]["train_step"]["est_seconds"] > 0
    json.dumps(d)
    assert "train_step" in preflight.format_table(r)


@needs_libtpu
def test_batch_far_too_large_does_not_fit_and_advice_names_the_knob():
    r = preflight.tpu(_small_config(batch=1 << 21), "v5e:2x2", sample=False)
    assert not r.fits()
    msg = preflight.advice(r)
    assert "config.batch_size" in msg and "temporaries" in msg


@needs_libtpu
def test_doubling_fsdp_halves_state_bytes_per_chip():
    """Parameters + optimizer moments + EMA per chip halve when the fsdp axis doubles."""
    a = preflight.tpu(_small_config(batch=8, fsdp=2), "v5p:2x2x1", sample=False)
    b = preflight.tpu(_small_config(batch=8, fsdp=4), "v5p:2x2x1", sample=False)
    ratio = b.state_bytes_per_device / a.state_bytes_per_device
    assert 0.45 < ratio < 0.6, ratio
    arg_ratio = b.programs[0].argument_bytes / a.programs[0].argument_bytes
    assert arg_ratio < 0.8, arg_ratio   # the compiled program's arguments (state + batch) shrink too


_SAME_SHARDINGS = r"""
import jax, json
from diffjax.preflight import report
from diffjax.models import registry
from diffjax.training import sharding, step as step_lib
from diffjax.training.config import base
c = base("dit_tiny")
c.model.input_shape = (16, 16, 3)
c.batch_size = 16
c.mesh.fsdp = 4
c.sharding.min_size = 2 ** 8
r = report.run(c, jax.devices(), sample=False)
mesh = sharding.make_mesh(c.mesh)
ts = step_lib.make_train_step(c, registry.build_model(c.model), mesh, example_shape=(16, 16, 3))
state = ts.jit_init()(jax.random.key(0))           # what the trainer creates
live = {}
jax.tree_util.tree_map_with_path(
    lambda p, x: live.__setitem__(sharding.path_name(p), str(x.sharding.spec)), state)
print(json.dumps({"report": r.state_specs, "live": live}))
"""


def test_cpu_preflight_reports_the_shardings_training_uses():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _SAME_SHARDINGS], env=env, capture_output=True,
                         text=True, timeout=600, cwd=os.path.dirname(os.path.dirname(
                             os.path.dirname(os.path.abspath(__file__)))))
    assert out.returncode == 0, out.stderr[-3000:]
    d = json.loads(out.stdout.strip().splitlines()[-1])
    assert d["report"] == d["live"]
    assert any("fsdp" in s for s in d["live"].values()), "some parameters must be FSDP-sharded"


# ---- the `diffjax preflight` command ------------------------------------------------------------
_TINY_DIT = ["--config", "configs/imagenet256_dit_xl2.py", "--config.model.depth=2",
             "--config.model.hidden_size=64", "--config.model.num_heads=2"]


def _cli(*args):
    from tests.training.util import run_cli
    return run_cli("preflight", *args)


def test_cli_unknown_topology_exits_with_a_clear_error():
    p = _cli(*_TINY_DIT, "--topology", "v9:2x2")
    assert p.returncode != 0
    assert "unknown TPU topology 'v9:2x2'" in p.stderr and "v5p:4x4x4" in p.stderr


@needs_libtpu
def test_cli_prints_the_table_and_writes_json(tmp_path):
    out = tmp_path / "report.json"
    p = _cli(*_TINY_DIT, "--config.batch_size=16", "--config.sample.steps=2", "--topology",
             "v5e:2x2", "--json", str(out))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "target v5e:2x2: 4 devices, mesh {'data': 1, 'fsdp': 4, 'tensor': 1}" in p.stdout
    assert "train_step" in p.stdout and "sample_loop" in p.stdout and "fits: yes" in p.stdout
    d = json.loads(out.read_text())
    assert d["fits"] and d["devices"] == 4 and d["hbm_bytes_per_device"] == 16 * 2 ** 30
    assert d["programs"]["train_step"]["flops_per_device"] > 0


@needs_libtpu
def test_cli_no_fit_exits_nonzero_naming_the_buffers_and_the_knob(tmp_path):
    cfg = tmp_path / "too_big.py"
    cfg.write_text("from tests.preflight.test_preflight import _small_config\n\n\n"
                   "def get_config():\n    return _small_config(batch=1 << 21)\n")
    p = _cli("--config", str(cfg), "--skip_sampler", "--topology", "v5e:2x2")
    assert p.returncode != 0
    assert "does not fit on v5e:2x2" in p.stderr
    assert "largest train-state arrays per device" in p.stderr and "config.batch_size" in p.stderr


@needs_libtpu
def test_conv_gradient_form_is_chosen_per_platform():
    """unet_blocks.Conv: Winograd matmuls (forward and kernel gradient) when lowered for CPU, XLA's
    own convolution and its gradient when lowered for TPU (what a deviceless preflight compiles)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from diffjax.models.unet_blocks import Conv

    layer = Conv(5, (3, 3), padding=((1, 1), (1, 1)))
    x = jnp.ones((2, 8, 8, 4))
    params = layer.init(jax.random.key(0), x)
    grad = jax.grad(lambda p, u: jnp.sum(layer.apply(p, u) ** 2))

    cpu = jax.jit(grad).lower(params, x).as_text()
    assert cpu.count("dot_general") >= 2 and cpu.count("convolution") == 0

    rep = NamedSharding(Mesh(np.array(preflight.devices("v5e:2x2")[:1]), ("d",)), PartitionSpec())
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep),
                            (params, x))
    tpu = jax.jit(grad, in_shardings=(rep, rep)).lower(*abstract).as_text()
    assert tpu.count("dot_general") == 0 and tpu.count("convolution") == 2   # forward + dW


def test_a_guidance_that_loads_another_run_is_refused_with_what_to_do():
    import jax
    from diffjax.preflight import report
    from tests.training.util import tiny_config

    c = tiny_config()
    c.model.input_shape = (8, 8, 1)
    c.sample.guidance.name = "auto"
    c.sample.guidance.scale = 2.0
    with pytest.raises(ValueError, match=r"needs one .*--skip_sampler"):
        report.run(c, jax.devices()[:1])
