"""Tensor (model) parallelism and multi-slice meshes (issue 18): the column/row rules split the
attention and MLP matrices over 'tensor'; data x fsdp x tensor meshes on 8 simulated CPU devices
train to the same losses and params as one device; the hybrid (ICI x DCN) mesh keeps FSDP inside a
slice and puts data parallelism across slices; fsdp='auto' picks the largest size that shards
every large leaf."""
import json

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from diffjax.training import sharding
from tests.training.util import run_python


def test_tensor_rules_split_columns_and_rows_then_fsdp():
    rules = sharding.DEFAULT_RULES
    strat = dict((name, next(s for p, s in rules if __import__("re").match(p, name)))
                 for name in ("params/block_0/attn/qkv/kernel", "params/blocks/block/mlp/fc2/kernel",
                              "opt_state/0/mu/block_3/mlp/fc1/bias", "params/block_0/adaLN/linear/kernel",
                              "params/branch_0/block_2/qkv/kernel"))
    assert strat == {"params/block_0/attn/qkv/kernel": "tensor_col",
                     "params/blocks/block/mlp/fc2/kernel": "tensor_row",
                     "opt_state/0/mu/block_3/mlp/fc1/bias": "tensor_col",
                     "params/block_0/adaLN/linear/kernel": "fsdp",
                     "params/branch_0/block_2/qkv/kernel": "tensor_col"}
    assert sharding.leaf_spec((64, 192), "tensor_col", 2, 4) == P("fsdp", "tensor")
    assert sharding.leaf_spec((256, 64), "tensor_row", 2, 4) == P("tensor", "fsdp")
    assert sharding.leaf_spec((3, 256, 64), "tensor_row", 1, 4) == P(None, "tensor", None)  # stacked
    assert sharding.leaf_spec((192,), "tensor_col", 1, 4) == P("tensor")
    assert sharding.leaf_spec((64,), "tensor_row", 4, 4) == P("fsdp")        # a row layer's bias
    # 90 % 4: no tensor split; fsdp takes the largest dimension it divides
    assert sharding.leaf_spec((64, 90), "tensor_col", 2, 4) == P(None, "fsdp")
    # with tensor 1 the tensor rules are the fsdp rule
    for shape in ((64, 192), (256, 64), (3, 64, 128), (192,)):
        for s in ("tensor_col", "tensor_row"):
            assert sharding.leaf_spec(shape, s, 4, 1) == sharding.fsdp_spec(shape, 4)


def test_auto_fsdp_picks_the_largest_size_that_shards_every_large_leaf():
    tree = {"params": {"a": jax.ShapeDtypeStruct((1152, 3456), np.float32),
                       "b": jax.ShapeDtypeStruct((1152, 1152), np.float32),
                       "small": jax.ShapeDtypeStruct((7,), np.float32)}}
    got = sharding.auto_fsdp({"data": -1, "fsdp": "auto", "tensor": 1}, tree, 256)
    assert got == {"data": -1, "fsdp": 128, "tensor": 1}
    assert sharding.mesh_shape(got, 256)[1] == (2, 128, 1)
    assert sharding.auto_fsdp({"data": -1, "fsdp": "auto", "tensor": 2}, tree, 256)["fsdp"] == 128
    assert sharding.auto_fsdp({"data": -1, "fsdp": "auto"}, tree, 6)["fsdp"] == 6
    assert sharding.auto_fsdp({"data": -1, "fsdp": 4}, tree, 8) == {"data": -1, "fsdp": 4}
    with pytest.raises(ValueError, match="fsdp='auto' needs data=-1"):
        sharding.auto_fsdp({"data": 2, "fsdp": "auto"}, tree, 8)
    with pytest.raises(ValueError, match="'auto' must be resolved first"):
        sharding.mesh_shape({"data": -1, "fsdp": "auto"}, 8)


class _Dev:
    def __init__(self, i, s=None):
        self.id, self.slice_index, self.platform = i, s, "cpu"

    def __repr__(self):
        return f"d{self.id}"


def test_hybrid_grid_keeps_inner_axes_within_a_slice():
    devs = [_Dev(i, i // 4) for i in range(8)]                  # 2 slices of 4
    grid = sharding.hybrid_grid((1, 4), (2, 1), devs)           # data 1x2 (dcn), fsdp 4 (ici)
    assert grid.shape == (2, 4)
    for row in grid:                                            # an fsdp group: one slice
        assert len({d.slice_index for d in row}) == 1
    for col in grid.T:                                          # a data group: across slices
        assert {d.slice_index for d in col} == {0, 1}
    shuffled = devs[4:] + devs[:4]                              # slice order, not list order
    assert [d.slice_index for d in sharding.hybrid_grid((1, 4), (2, 1), shuffled)[:, 0]] == [0, 1]
    with pytest.raises(ValueError, match="wants 4 slices of 2 devices"):
        sharding.hybrid_grid((1, 2), (4, 1), devs)


TP = """
import json, sys, jax, numpy as np
sys.path.insert(0, '.')
from diffjax.data import pipeline, registry as data_registry
from diffjax.models import registry as model_registry
from diffjax.training import sharding, step as step_lib
from tests.training.util import load_config

def config(scan):
    c = load_config("digits_dit")
    c.data.resolution = 8
    c.model.update(dict(input_shape=(8, 8, 1), hidden_size=32, depth=2, num_heads=4,
                        scan_layers=scan))
    c.batch_size, c.total_steps = 8, 3
    c.optim.warmup_steps = 1
    c.sharding.min_size = 0
    return c

out = {}
for name, n, mesh, scan in (("1dev", 1, {"data": 1}, False), ("1dev_scan", 1, {"data": 1}, True),
                            ("d2_f2_t2", 8, {"data": 2, "fsdp": 2, "tensor": 2}, False),
                            ("d1_f2_t4", 8, {"data": 1, "fsdp": 2, "tensor": 4}, True),
                            ("d4_t2", 8, {"data": 4, "fsdp": 1, "tensor": 2}, True)):
    c = config(scan)
    source = data_registry.get_source(c.data)
    model = model_registry.build_model(c.model)
    m = sharding.make_mesh(mesh, jax.devices()[:n])
    ts = step_lib.make_train_step(c, model, m, example_shape=source[0]["x"].shape)
    state = ts.jit_init()(jax.random.key(0))
    step = ts.jit_step()
    it = pipeline.make_iterator(source, ts.micro_batch, seed=0)
    losses = []
    for _ in range(3):
        state, met = step(state, sharding.to_global(next(it), ts.batch_sharding))
        losses.append(float(met["loss"]))
    params = jax.device_get(state.params)
    if scan:
        from diffjax.models import scan as scan_lib
        params = scan_lib.unstack(params, model.scan_layout())
    flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(params)])
    qkv = [str(x.sharding.spec) for p, x in jax.tree_util.tree_flatten_with_path(state.params)[0]
           if "qkv" in sharding.path_name(p) and "kernel" in sharding.path_name(p)]
    out[name] = {"losses": losses, "params": flat.tolist(), "qkv": qkv}
dcn = sharding.make_mesh({"data": -1, "fsdp": 4}, jax.devices(), {"data": 2})
out["dcn"] = {"shape": dict(dcn.shape), "ids": [[d.id for d in r] for r in dcn.devices]}
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.ci
def test_data_fsdp_tensor_meshes_train_like_one_device():
    p = run_python(TP, devices=8, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.split("RESULT ", 1)[1])
    for name in ("d2_f2_t2", "d1_f2_t4", "d4_t2"):
        ref = out["1dev" if name == "d2_f2_t2" else "1dev_scan"]   # scanned init draws differ
        assert "tensor" in out[name]["qkv"][0], out[name]["qkv"]
        np.testing.assert_allclose(out[name]["losses"], ref["losses"], rtol=1e-5)
        a, b = np.asarray(ref["params"]), np.asarray(out[name]["params"])
        assert np.max(np.abs(a - b)) / np.max(np.abs(a)) < 1e-5, name
    assert out["1dev"]["losses"][0] != out["1dev"]["losses"][-1]
    assert out["dcn"]["shape"] == {"data": 2, "fsdp": 4}
    assert out["dcn"]["ids"] == [[0, 1, 2, 3], [4, 5, 6, 7]]   # fsdp within a slice (4 devices)
