"""Mesh resolution and the FSDP rule (pure functions: no devices beyond the default one)."""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from diffjax.training import sharding


def test_mesh_shape_fills_minus_one():
    assert sharding.mesh_shape({"data": -1, "fsdp": 1}, 8) == (("data", "fsdp"), (8, 1))
    assert sharding.mesh_shape({"data": -1, "fsdp": 2}, 8) == (("data", "fsdp"), (4, 2))
    assert sharding.mesh_shape({"data": 1, "fsdp": -1}, 8) == (("data", "fsdp"), (1, 8))
    assert sharding.mesh_shape({"data": 2, "fsdp": 4}, 8) == (("data", "fsdp"), (2, 4))


@pytest.mark.parametrize("axes, n, match", [
    ({"data": -1, "fsdp": -1}, 8, "at most one"),
    ({"data": -1, "fsdp": 3}, 8, "not divisible"),
    ({"data": 2, "fsdp": 2}, 8, "needs 4 devices"),
    ({"data": -1, "model": 1}, 8, "unknown axis"),
])
def test_mesh_shape_errors(axes, n, match):
    with pytest.raises(ValueError, match=match):
        sharding.mesh_shape(axes, n)


def test_fsdp_spec_picks_largest_divisible_dim():
    assert sharding.fsdp_spec((3, 3, 64, 128), 4) == P(None, None, None, "fsdp")
    assert sharding.fsdp_spec((128, 64), 4) == P("fsdp", None)
    assert sharding.fsdp_spec((130, 64), 4) == P(None, "fsdp")     # 130 not divisible
    assert sharding.fsdp_spec((3, 5), 4) == P()                    # nothing divides
    assert sharding.fsdp_spec((128, 64), 4, min_size=10 ** 6) == P()  # too small to shard
    assert sharding.fsdp_spec((128, 64), 1) == P()


def test_tree_shardings_follow_rules():
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1})
    tree = {"params": {"dense": {"kernel": np.zeros((64, 64)), "bias": np.zeros((64,))}},
            "step": np.zeros(())}
    sh = sharding.tree_shardings(tree, mesh, [(".*bias", "replicate"), (".*", "fsdp")], 0)
    assert sh["params"]["dense"]["bias"].spec == P()
    assert sh["step"].spec == P()
    with pytest.raises(ValueError, match="unknown strategy"):
        sharding.tree_shardings(tree, mesh, [(".*", "tensor")])


def test_batch_sharding_covers_data_axes():
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1})
    assert sharding.batch_sharding(mesh).spec == P(("data", "fsdp"))
    assert sharding.batch_divisor(mesh) == len(jax.devices())
