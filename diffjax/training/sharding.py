"""Device mesh and sharding rules, both read from the config (the big_vision / maxdiffusion recipe).

    config.mesh = {'data': -1, 'fsdp': 1}     ordered mesh axes; -1 takes the remaining devices
    config.sharding.rules = (('.*', 'fsdp'),)  first regex matching a leaf's '/'-joined path wins
    config.sharding.min_size = 2 ** 14         leaves with fewer elements are always replicated

Rules, applied to every array of the train state (params, optimizer moments, EMA copies, step, rng):
    'fsdp'       shard over the 'fsdp' axis along the largest dimension divisible by its size
                 (ZeRO-3 / FSDP, Rajbhandari et al. 2020; big_vision's ``fsdp`` strategy);
                 replicated when no dimension divides or the leaf is small;
    'replicate'  a full copy on every device.
The batch's leading dimension is split over ('data', 'fsdp'): every device sees distinct examples.
Everything here works on any device list (real, simulated ``--xla_force_host_platform_device_count``
CPUs, several processes, or a deviceless TPU topology for ahead-of-time compilation).
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")
PARAM_AXIS = "fsdp"
STRATEGIES = ("fsdp", "replicate")


def mesh_shape(axes: Mapping[str, int], num_devices: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Resolve ``{'data': -1, 'fsdp': 2}`` against ``num_devices`` into (names, sizes)."""
    names, sizes = tuple(axes.keys()), [int(v) for v in axes.values()]
    unknown = set(names) - set(BATCH_AXES)
    if unknown:
        raise ValueError(f"config.mesh has unknown axis name(s) {sorted(unknown)}; valid axes are "
                         f"{BATCH_AXES}")
    if sum(s == -1 for s in sizes) > 1:
        raise ValueError(f"config.mesh may use -1 for at most one axis, got {dict(axes)}")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"config.mesh sizes must be positive or -1, got {dict(axes)}")
    fixed = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % fixed:
            raise ValueError(f"config.mesh {dict(axes)}: {num_devices} devices are not divisible "
                             f"by the fixed axes' product {fixed}")
        sizes[sizes.index(-1)] = num_devices // fixed
    if math.prod(sizes) != num_devices:
        raise ValueError(f"config.mesh {dict(axes)} needs {math.prod(sizes)} devices, "
                         f"but {num_devices} are available")
    return names, tuple(sizes)


def make_mesh(axes: Mapping[str, int], devices: Sequence[Any] | None = None) -> Mesh:
    """A Mesh over ``devices`` (default: all of ``jax.devices()``) with the config's axes."""
    devices = list(jax.devices() if devices is None else devices)
    names, sizes = mesh_shape(dict(axes), len(devices))
    try:  # topology-aware device order on TPU/GPU slices
        from jax.experimental import mesh_utils
        grid = mesh_utils.create_device_mesh(sizes, devices)
    except Exception:  # CPU and abstract devices: the given order is as good as any
        grid = np.asarray(devices, dtype=object).reshape(sizes)
    return Mesh(grid, names)


def axis_size(mesh: Mesh, name: str) -> int:
    return int(mesh.shape.get(name, 1))


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    return tuple(a for a in BATCH_AXES if a in mesh.axis_names)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over every data-parallel axis of the mesh."""
    return NamedSharding(mesh, P(batch_axes(mesh)))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_divisor(mesh: Mesh) -> int:
    """The global batch must be a multiple of this (the number of batch shards)."""
    return math.prod(axis_size(mesh, a) for a in batch_axes(mesh))


def fsdp_spec(shape: Sequence[int], fsdp_size: int, min_size: int = 0) -> P:
    """Shard the largest dimension divisible by ``fsdp_size`` over 'fsdp' (ties: the last one)."""
    if fsdp_size <= 1 or math.prod(shape) < max(min_size, 1):
        return P()
    best = None
    for i, d in enumerate(shape):
        if d % fsdp_size == 0 and d >= fsdp_size and (best is None or d >= shape[best]):
            best = i
    if best is None:
        return P()
    spec = [None] * len(shape)
    spec[best] = PARAM_AXIS
    return P(*spec)


def path_name(path) -> str:
    """'params/conv_in/kernel' from a jax tree key path."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _compile_rules(rules: Sequence[Sequence[str]]):
    compiled = []
    for rule in rules:
        pattern, strategy = rule
        if strategy not in STRATEGIES:
            raise ValueError(f"config.sharding.rules: unknown strategy {strategy!r} for pattern "
                             f"{pattern!r}; expected one of {STRATEGIES}")
        compiled.append((re.compile(pattern), strategy))
    return lambda name: next((s for p, s in compiled if p.fullmatch(name) or p.match(name)),
                             "replicate")


def tree_shardings(tree: Any, mesh: Mesh, rules: Sequence[Sequence[str]] = ((".*", "fsdp"),),
                   min_size: int = 2 ** 14) -> Any:
    """NamedSharding for every array leaf of ``tree`` (arrays or ShapeDtypeStructs) by the rules."""
    strategy_of = _compile_rules(rules)
    fsdp = axis_size(mesh, PARAM_AXIS)

    def one(path, leaf):
        if strategy_of(path_name(path)) == "replicate" or not hasattr(leaf, "shape"):
            return NamedSharding(mesh, P())
        return NamedSharding(mesh, fsdp_spec(tuple(leaf.shape), fsdp, min_size))

    return jax.tree_util.tree_map_with_path(one, tree)


def fsdp_undivided(tree: Any, fsdp_size: int, rules: Sequence[Sequence[str]] = ((".*", "fsdp"),),
                   min_size: int = 2 ** 14) -> list[tuple[str, tuple[int, ...]]]:
    """(path, shape) of the leaves the rules give to 'fsdp' that stay whole on every device because
    none of their dimensions is divisible by ``fsdp_size`` (e.g. DiT-XL/2's 1152 x 3456 attention
    kernels at fsdp 256: 1152 = 2^7 * 9)."""
    if fsdp_size <= 1:
        return []
    strategy_of = _compile_rules(rules)
    out = []

    def visit(path, leaf):
        shape = tuple(getattr(leaf, "shape", ()))
        if (shape and strategy_of(path_name(path)) == "fsdp" and math.prod(shape) >= max(min_size, 1)
                and fsdp_spec(shape, fsdp_size, min_size) == P()):
            out.append((path_name(path), shape))

    jax.tree_util.tree_map_with_path(visit, tree)
    return out


def fsdp_sizes_dividing(shapes: Sequence[Sequence[int]], num_devices: int) -> list[int]:
    """The fsdp sizes > 1 (divisors of ``num_devices``, largest first) under which every shape has a
    dimension divisible by the size, i.e. none of them stays replicated."""
    return [k for k in range(num_devices, 1, -1) if num_devices % k == 0
            and all(any(d % k == 0 and d >= k for d in shape) for shape in shapes)]


def to_global(local_batch: Any, sharding: NamedSharding) -> Any:
    """Assemble each process's slice of the batch (numpy) into one global jax.Array per leaf."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                        local_batch)


def abstract(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying shardings: the input of ``.lower()`` and of a sharded restore."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                        shardings)
