"""Pod-scale forms on deviceless TPU compiles of small models (issue 18): rematerialization lowers
the train step's temporaries at a bounded FLOP cost, the FSDP-sharded blocks compile without any
all-to-all (and do need one without the models' sharding constraints, so the check can fail), the
sampling loop's FLOPs per chip are what its per-chip batch needs, and fsdp='auto' shards what a
fixed fsdp size would leave whole."""
import pytest

from diffjax import preflight
from diffjax.models import partitioning
from diffjax.models import registry
from diffjax.training import step as step_lib
from diffjax.training.config import base

needs_libtpu = pytest.mark.skipif(
    not preflight.libtpu_available(),
    reason="libtpu not installed: pip install -e '.[tpu]' to compile for deviceless TPU topologies")


def _dit(batch=16, depth=2, hidden=96, res=16, **model):
    c = base("dit_tiny", depth=depth, hidden_size=hidden, num_heads=4, **model)
    c.model.input_shape = (res, res, 3)
    c.batch_size = batch
    c.sharding.min_size = 2 ** 8
    c.sample.steps = 4
    c.sample.sampler = "ddim"
    return c


@needs_libtpu
def test_full_remat_lowers_temporaries_at_bounded_flops():
    out = {}
    for policy in ("none", "full"):
        c = _dit(batch=64, depth=4, hidden=64, res=32, remat=policy)
        out[policy] = preflight.tpu(c, "v5e:2x2", sample=False).programs[0]
    assert out["full"].temp_bytes < 0.7 * out["none"].temp_bytes
    # one extra forward pass at most: backward ~2x forward, so <= 4/3 of the plain step (+ slack)
    assert out["none"].flops < out["full"].flops < 1.45 * out["none"].flops


def _train_hlo(c, topology="v5e:2x2"):
    model = registry.build_model(c.model)
    devs = preflight.devices(topology)
    mesh = step_lib.make_mesh(c, model, tuple(c.model.input_shape), devs)
    ts = step_lib.make_train_step(c, model, mesh, example_shape=tuple(c.model.input_shape))
    return ts.jit_step().lower(ts.abstract_state, ts.abstract_batch).compile().as_text()


@needs_libtpu
@pytest.mark.parametrize("scan", [False, True])
def test_fsdp_blocks_compile_without_all_to_all(scan, monkeypatch):
    c = _dit(scan_layers=scan, num_classes=10, remat="dots_with_no_batch_dims_saveable")
    c.mesh.data, c.mesh.fsdp = 2, 4              # DiT-XL/2 on v5e:16x16 in small: data x fsdp
    assert "all-to-all" not in _train_hlo(c, "v5e:2x4")
    if not scan:   # without the constraints XLA re-lays activations out around sharded kernels
        monkeypatch.setattr(partitioning, "spec", lambda shape, names: None)
        monkeypatch.setattr(partitioning, "_mesh", lambda: None)
        assert "all-to-all" in _train_hlo(c, "v5e:2x4")


@needs_libtpu
def test_sampling_flops_per_chip_match_the_per_chip_batch():
    """The sampling step over 4 chips with FSDP-sharded params costs what one chip needs for its
    quarter of the batch: no replicated computation."""
    c = _dit(batch=16, depth=2, hidden=128)
    c.mesh.data, c.mesh.fsdp = 1, 4
    sharded = preflight.tpu(c, "v5e:2x2").programs[1]
    c1 = _dit(batch=4, depth=2, hidden=128)
    c1.mesh.data, c1.mesh.fsdp = 1, 1
    single = preflight.run(c1, preflight.devices("v5e:2x2")[:1]).programs[1]
    assert sharded.name == single.name == "sample_loop"
    assert single.flops * 0.9 < sharded.flops < 1.1 * single.flops, (sharded.flops, single.flops)


@needs_libtpu
def test_auto_fsdp_shards_what_a_fixed_size_leaves_whole():
    c = _dit(batch=8, hidden=36)              # qkv (36, 108): no dimension divisible by 8
    c.mesh.data, c.mesh.fsdp = 1, 8
    fixed = preflight.tpu(c, "v5e:2x4", sample=False)
    c.mesh.data, c.mesh.fsdp = -1, "auto"
    auto = preflight.tpu(c, "v5e:2x4", sample=False)
    assert fixed.undivided and not auto.undivided
    assert auto.mesh_shape["fsdp"] * auto.mesh_shape["data"] == 8 and auto.mesh_shape["fsdp"] < 8
    assert "--config.mesh.fsdp=auto" in fixed.undivided_warning()


@needs_libtpu
def test_two_slices_put_data_across_slices_and_fsdp_within_one():
    c = _dit(batch=16)
    c.mesh.data, c.mesh.fsdp = -1, 4
    c.dcn_mesh.data = 2
    r = preflight.tpu(c, "v5e:2x2", sample=False, num_slices=2)
    assert r.num_devices == 8 and r.mesh_shape == {"data": 2, "fsdp": 4, "tensor": 1}
    assert r.target == "2 x v5e:2x2" and r.fits()
    model = registry.build_model(c.model)
    devs = preflight.devices("v5e:2x2", 2)
    mesh = step_lib.make_mesh(c, model, tuple(c.model.input_shape), devs)
    grid = mesh.devices.reshape(2, 4)        # (data, fsdp); tensor 1
    for row in grid:                         # one fsdp group = one slice
        assert len({d.slice_index for d in row}) == 1
    assert {d.slice_index for d in grid[:, 0]} == {0, 1}


@needs_libtpu
def test_scanned_flops_count_every_layer():
    """XLA counts a loop body once; the preflight extrapolates a scanned model's costs from its
    scanned and unrolled depth-2 compiles, which must give the unrolled model's own figures."""
    got = {}
    for scan in (False, True):
        c = _dit(depth=5, hidden=64, scan_layers=scan)
        c.mesh.data, c.mesh.fsdp = 1, 4
        got[scan] = preflight.tpu(c, "v5e:2x2")
    assert got[True].flops_note and not got[False].flops_note
    for a, b in zip(got[False].programs, got[True].programs):
        assert abs(a.flops - b.flops) < 0.01 * a.flops, (a.name, a.flops, b.flops)
