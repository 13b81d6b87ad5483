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


def test_fsdp_undivided_names_the_leaves_no_dimension_splits():
    """DiT-XL/2 widths at fsdp 256: 1152 = 2^7 * 9 and 3456 = 2^7 * 27 have no dimension divisible by
    256, 6912 = 2^8 * 27 has; the report must name exactly the first two, and 128 splits them all."""
    tree = {"params": {"attn": {"qkv": np.zeros((1152, 3456), np.float32),
                                "proj": np.zeros((1152, 1152), np.float32),
                                "bias": np.zeros((3456,), np.float32)},       # small: replicated anyway
                       "ada": {"kernel": np.zeros((1152, 6912), np.float32)},
                       "pos": np.zeros((256, 1152), np.float32)},
            "ema": {"proj": np.zeros((1152, 1152), np.float32)}}
    rules = (("ema/.*", "replicate"), (".*", "fsdp"))
    found = dict(sharding.fsdp_undivided(tree, 256, rules))
    assert found == {"params/attn/qkv": (1152, 3456), "params/attn/proj": (1152, 1152)}
    for shape in found.values():
        assert all(d % 256 for d in shape)
    assert sharding.fsdp_undivided(tree, 128, rules) == []
    assert sharding.fsdp_undivided(tree, 1, rules) == []
    sizes = sharding.fsdp_sizes_dividing(list(found.values()), 256)
    assert sizes[0] == 128 and 256 not in sizes and all(256 % k == 0 for k in sizes)
    assert sharding.fsdp_sizes_dividing([(7, 9)], 4) == []


def test_preflight_warns_about_undivided_leaves_and_suggests_a_mesh():
    from diffjax.preflight import report
    r = report.Report(target="v5e:16x16", num_devices=256, mesh_shape={"data": 1, "fsdp": 256},
                      hbm_bytes=16 * 2 ** 30, peak_flops=None, bandwidth=None, programs=[],
                      state_bytes_per_device=3 * 2 ** 30, largest_leaves=[], state_specs={},
                      undivided=[("params/attn/qkv", (1152, 3456), 2 ** 24)], fsdp_hint=128)
    text = report.format_table(r)
    assert "params/attn/qkv" in text and "fsdp=256" in text
    assert "--config.mesh.fsdp=128 --config.mesh.data=2" in text
    assert r.as_dict()["fsdp_hint"] == 128
    r.undivided, r.fsdp_hint = [], None
    assert "warning" not in report.format_table(r)


def test_preflight_collects_undivided_leaves_with_their_bytes_largest_first():
    """report._undivided (what preflight.run attaches to the Report) on an abstract DiT-like state."""
    import jax.numpy as jnp
    import ml_collections
    from diffjax.preflight import report
    state = {"params": {"qkv": jax.ShapeDtypeStruct((1152, 3456), jnp.float32),
                        "proj": jax.ShapeDtypeStruct((1152, 1152), jnp.bfloat16),
                        "ada": jax.ShapeDtypeStruct((1152, 6912), jnp.float32)}}
    cfg = ml_collections.ConfigDict({"sharding": {"rules": ((".*", "fsdp"),), "min_size": 2 ** 14}})
    rows, hint = report._undivided(cfg, state, {"data": 1, "fsdp": 256}, 256)
    assert rows == [("params/qkv", (1152, 3456), 1152 * 3456 * 4),
                    ("params/proj", (1152, 1152), 1152 * 1152 * 2)]
    assert hint == 128
    assert report._undivided(cfg, state, {"data": 2, "fsdp": 128}, 256) == ([], None)
