"""The batch arithmetic in one place (training/batching.py)."""
import jax
import pytest

from diffjax.training import batching, sharding
from tests.training.util import tiny_config


def _mesh():
    return sharding.make_mesh({"data": 1, "fsdp": 1}, jax.devices()[:1])


def test_plan_divides_the_batch():
    c = tiny_config(batch_size=32, **{"optim.accum_steps": 2, "optim.grad_slices": 4})
    p = batching.plan(c, _mesh(), process_count=2)
    assert (p.global_batch, p.micro_batch, p.per_process, p.per_shard, p.slice_size) == \
        (32, 16, 8, 16, 4)


@pytest.mark.parametrize("overrides, procs, needle", [
    ({"batch_size": 30, "optim.accum_steps": 4}, 1, r"config\.batch_size 30 is not divisible by "
                                                    r"config\.optim\.accum_steps 4"),
    ({"batch_size": 8, "optim.grad_slices": 3}, 1, r"config\.optim\.grad_slices 3 must divide "
                                                   r"the micro-batch 8"),
    ({"batch_size": 6}, 4, r"micro-batch 6 .* not divisible by the 4 processes"),
])
def test_plan_names_the_keys_that_do_not_divide(overrides, procs, needle):
    with pytest.raises(ValueError, match=needle):
        batching.plan(tiny_config(**overrides), _mesh(), process_count=procs)
