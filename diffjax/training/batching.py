"""The batch arithmetic of a run, computed and checked in one place.

    plan = batching.plan(config, mesh)
    plan.micro_batch     examples per train-step call (the global micro-batch)
    plan.per_process     of those, the examples each process loads (its shard of the batch)

    config.batch_size  = global batch B: examples per optimizer step
    config.optim.accum_steps = k     ->  micro_batch = B / k   (optax MultiSteps over k calls)
    mesh data axes (data x fsdp) = n ->  per_shard   = micro_batch / n
    processes = P                    ->  per_process = micro_batch / P
    config.optim.grad_slices = s     ->  slice_size  = micro_batch / s   (lax.scan inside one call)

Every division must be exact; the first that is not is a ValueError naming the config keys and
the numbers. The data pipeline reads ``plan.micro_batch`` (and splits it over processes), the
train step ``plan.micro_batch`` and ``plan.grad_slices``, the trainer ``plan.accum_steps``.
"""
from __future__ import annotations

from typing import NamedTuple

import jax

from diffjax.training import sharding


class BatchPlan(NamedTuple):
    global_batch: int
    accum_steps: int
    micro_batch: int
    batch_shards: int
    per_shard: int
    process_count: int
    per_process: int
    grad_slices: int
    slice_size: int


def plan(config, mesh, process_count: int | None = None) -> BatchPlan:
    """The run's batch sizes (see module doc); ValueError naming the keys if one does not divide."""
    b = int(config.batch_size)
    k = int(config.optim.accum_steps)
    s = int(config.optim.get("grad_slices", 1))    # runs saved before the key existed
    n = sharding.batch_divisor(mesh)
    p = jax.process_count() if process_count is None else int(process_count)
    if b < 1 or k < 1 or s < 1:
        raise ValueError(f"config.batch_size ({b}), config.optim.accum_steps ({k}) and "
                         f"config.optim.grad_slices ({s}) must be >= 1")
    if b % k:
        raise ValueError(f"config.batch_size {b} is not divisible by config.optim.accum_steps {k}")
    micro = b // k
    if micro % n:
        raise ValueError(f"the micro-batch {micro} (config.batch_size / config.optim.accum_steps) "
                         f"is not divisible by the {n} batch shards of mesh {dict(mesh.shape)}; "
                         f"change config.batch_size or config.mesh")
    if micro % p:
        raise ValueError(f"the micro-batch {micro} (config.batch_size / config.optim.accum_steps) "
                         f"is not divisible by the {p} processes")
    if micro % s:
        raise ValueError(f"config.optim.grad_slices {s} must divide the micro-batch {micro} "
                         f"(config.batch_size / config.optim.accum_steps)")
    return BatchPlan(global_batch=b, accum_steps=k, micro_batch=micro, batch_shards=n,
                     per_shard=micro // n, process_count=p, per_process=micro // p,
                     grad_slices=s, slice_size=micro // s)
