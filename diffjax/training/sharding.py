"""Device mesh and sharding rules, both read from the config (the big_vision / maxdiffusion recipe).

    config.mesh = {'data': -1, 'fsdp': 1, 'tensor': 1}   ordered mesh axes; -1 takes the remaining
                                               devices; fsdp may be 'auto' (``auto_fsdp``)
    config.dcn_mesh = {'data': 1, ...}         multi-slice: how many slices each axis spans
                                               (``make_mesh``; 1 everywhere = one slice)
    config.sharding.rules = TENSOR_RULES + (('.*', 'fsdp'),)   first regex matching a leaf's
                                               '/'-joined path wins
    config.sharding.min_size = 2 ** 14         leaves with fewer elements are always replicated

Rules, applied to every array of the train state (params, optimizer moments, EMA copies, step, rng):
    'fsdp'       shard over the 'fsdp' axis along the largest dimension divisible by its size
                 (ZeRO-3 / FSDP, Rajbhandari et al. 2020; big_vision's ``fsdp`` strategy);
                 replicated when no dimension divides or the leaf is small;
    'tensor_col' Megatron's column split (Shoeybi et al. 2019): the output (last) dimension over
                 the 'tensor' axis, then 'fsdp' on the largest other dimension it divides
                 (qkv / fc1 kernels and their biases);
    'tensor_row' the row split: the input (second-to-last) dimension over 'tensor', then 'fsdp'
                 (attention output projection, fc2); 1-D leaves (their biases) get 'fsdp' only;
    'replicate'  a full copy on every device.
With 'tensor' of size 1 the tensor rules are the 'fsdp' rule. Inside the models, activations carry
matching constraints (``models/partitioning.py``): tokens split by batch, attention heads and MLP
hidden units by 'tensor', the adaLN modulation gathered along its features.
The batch's leading dimension is split over ('data', 'fsdp'): every device sees distinct examples
(the devices of one 'tensor' group share theirs).
Everything here works on any device list (real, simulated ``--xla_force_host_platform_device_count``
CPUs, several processes, or a deviceless TPU topology for ahead-of-time compilation).
"""
from __future__ import annotations

import functools
import math
import re
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")
PARAM_AXIS = "fsdp"
MODEL_AXIS = "tensor"
MESH_AXES = BATCH_AXES + (MODEL_AXIS,)
STRATEGIES = ("fsdp", "replicate", "tensor_col", "tensor_row")
# the attention and MLP matrices of the transformer families (unrolled 'block_i/...' and scanned
# 'blocks/block/...' paths alike; DiMR's gated MLP w0/w1 -> w2; PixArt's cross-attention q/kv)
TENSOR_RULES = (
    (r".*/(attn|cross_attn)/(qkv|q|kv)/(kernel|bias)", "tensor_col"),
    (r".*/(attn|cross_attn)/proj/kernel", "tensor_row"),
    (r".*/block(_\d+)?/(qkv)/kernel", "tensor_col"),
    (r".*/block(_\d+)?/proj/kernel", "tensor_row"),
    (r".*/mlp/(fc1|w0|w1)/(kernel|bias)", "tensor_col"),
    (r".*/mlp/(fc2|w2)/kernel", "tensor_row"),
)
DEFAULT_RULES = TENSOR_RULES + ((".*", "fsdp"),)


def mesh_shape(axes: Mapping[str, int], num_devices: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Resolve ``{'data': -1, 'fsdp': 2}`` against ``num_devices`` into (names, sizes)."""
    names = tuple(axes.keys())
    unknown = set(names) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"config.mesh has unknown axis name(s) {sorted(unknown)}; valid axes are "
                         f"{MESH_AXES}")
    if any(v == "auto" for v in axes.values()):
        raise ValueError(f"config.mesh {dict(axes)}: 'auto' must be resolved first "
                         "(sharding.auto_fsdp, done by the trainer and the preflight)")
    try:
        sizes = [int(v) for v in axes.values()]
    except (TypeError, ValueError):
        raise ValueError(f"config.mesh sizes must be integers, -1, or fsdp='auto'; got "
                         f"{dict(axes)}") from None
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


def make_mesh(axes: Mapping[str, int], devices: Sequence[Any] | None = None,
              dcn: Mapping[str, int] | None = None) -> Mesh:
    """A Mesh over ``devices`` (default: all of ``jax.devices()``) with the config's axes.

    ``dcn`` (``config.dcn_mesh``): how many slices each axis spans. Then ``axes`` is the shape
    within one slice (ICI; -1 resolves against the devices per slice) and the mesh axis sizes are
    ici x dcn, each axis slice-major: devices of one slice form a contiguous block of every axis,
    so an axis with dcn 1 (e.g. 'fsdp') never crosses a slice and only the axes spanning slices
    (e.g. 'data') communicate over the data-center network (``mesh_utils
    .create_hybrid_device_mesh``; ``hybrid_grid`` where devices carry no slice index)."""
    devices = list(jax.devices() if devices is None else devices)
    dcn = {k: int(v) for k, v in dict(dcn or {}).items()}
    unknown = set(dcn) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"config.dcn_mesh has unknown axis name(s) {sorted(unknown)}; valid axes "
                         f"are {MESH_AXES}")
    if any(v < 1 for v in dcn.values()):
        raise ValueError(f"config.dcn_mesh sizes must be >= 1, got {dcn}")
    slices = math.prod(dcn.values()) if dcn else 1
    if slices > 1:
        if len(devices) % slices:
            raise ValueError(f"config.dcn_mesh {dcn} spans {slices} slices, but {len(devices)} "
                             f"devices do not split into {slices} equal slices")
        names, ici = mesh_shape(dict(axes), len(devices) // slices)
        dcn_sizes = tuple(dcn.get(n, 1) for n in names)
        extra = set(dcn) - set(names)
        if any(dcn[n] > 1 for n in extra):
            raise ValueError(f"config.dcn_mesh spans axes {sorted(extra)} that config.mesh lacks")
        return Mesh(hybrid_grid(ici, dcn_sizes, devices), names)
    names, sizes = mesh_shape(dict(axes), len(devices))
    try:  # topology-aware device order on TPU/GPU slices
        from jax.experimental import mesh_utils
        grid = mesh_utils.create_device_mesh(sizes, devices)
    except Exception:  # CPU and abstract devices: the given order is as good as any
        grid = np.asarray(devices, dtype=object).reshape(sizes)
    return Mesh(grid, names)


def slice_of(device, devices_per_slice: int, position: int) -> int:
    """A device's slice: its ``slice_index`` (TPU multi-slice), else consecutive blocks of the
    device list (simulated devices, processes listed in order)."""
    idx = getattr(device, "slice_index", None)
    return int(idx) if idx is not None else position // devices_per_slice


def hybrid_grid(ici: Sequence[int], dcn: Sequence[int], devices: Sequence[Any]) -> np.ndarray:
    """The device grid of shape ici x dcn (elementwise): slice s (its position in the dcn grid)
    fills block s of every axis with its devices in the ici shape."""
    ici, dcn = tuple(ici), tuple(dcn)
    per = math.prod(ici)
    groups: dict[int, list] = {}
    for pos, d in enumerate(devices):
        groups.setdefault(slice_of(d, per, pos), []).append(d)
    if len(groups) != math.prod(dcn) or any(len(g) != per for g in groups.values()):
        raise ValueError(f"config.dcn_mesh wants {math.prod(dcn)} slices of {per} devices; the "
                         f"devices form {len(groups)} slices of sizes "
                         f"{sorted(len(g) for g in groups.values())}")
    if all(getattr(d, "slice_index", None) is not None for d in devices) and devices[0].platform in (
            "tpu", "gpu"):
        try:
            from jax.experimental import mesh_utils
            return mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
        except Exception:   # e.g. a topology mesh_utils does not know: the block layout below
            pass
    grid = np.empty(tuple(i * d for i, d in zip(ici, dcn)), dtype=object)
    for s, key in enumerate(sorted(groups)):
        block = np.asarray(groups[key], dtype=object).reshape(ici)
        coord = np.unravel_index(s, dcn)
        grid[tuple(slice(c * i, (c + 1) * i) for c, i in zip(coord, ici))] = block
    return grid


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


def _fsdp_dim(shape: Sequence[int], fsdp_size: int, exclude: int | None = None) -> int | None:
    best = None
    for i, d in enumerate(shape):
        if i != exclude and d % fsdp_size == 0 and d >= fsdp_size and (
                best is None or d >= shape[best]):
            best = i
    return best


def fsdp_spec(shape: Sequence[int], fsdp_size: int, min_size: int = 0) -> P:
    """Shard the largest dimension divisible by ``fsdp_size`` over 'fsdp' (ties: the last one)."""
    return leaf_spec(shape, "fsdp", fsdp_size, 1, min_size)


def tensor_dim(shape: Sequence[int], strategy: str) -> int | None:
    """The dimension a tensor rule splits: the last ('tensor_col'), the second to last
    ('tensor_row', None for a 1-D leaf), None for the other strategies."""
    if strategy == "tensor_col" and shape:
        return len(shape) - 1
    if strategy == "tensor_row" and len(shape) >= 2:
        return len(shape) - 2
    return None


def leaf_spec(shape: Sequence[int], strategy: str, fsdp_size: int, tensor_size: int = 1,
              min_size: int = 0) -> P:
    """The PartitionSpec of one leaf under a rule's ``strategy`` (module doc): the tensor split
    (when the tensor size divides that dimension), then 'fsdp' on the largest other dimension it
    divides; replicated for 'replicate' and for leaves under ``min_size`` elements."""
    shape = tuple(shape)
    if strategy == "replicate" or math.prod(shape) < max(min_size, 1):
        return P()
    spec = [None] * len(shape)
    t = tensor_dim(shape, strategy) if tensor_size > 1 else None
    if t is not None and shape[t] % tensor_size == 0:
        spec[t] = MODEL_AXIS
    else:
        t = None
    f = _fsdp_dim(shape, fsdp_size, exclude=t) if fsdp_size > 1 else None
    if f is not None:
        spec[f] = PARAM_AXIS
    return P(*spec) if any(spec) else P()


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


def tree_shardings(tree: Any, mesh: Mesh, rules: Sequence[Sequence[str]] = DEFAULT_RULES,
                   min_size: int = 2 ** 14) -> Any:
    """NamedSharding for every array leaf of ``tree`` (arrays or ShapeDtypeStructs) by the rules."""
    strategy_of = _compile_rules(rules)
    fsdp, tensor = axis_size(mesh, PARAM_AXIS), axis_size(mesh, MODEL_AXIS)

    def one(path, leaf):
        if not hasattr(leaf, "shape"):
            return NamedSharding(mesh, P())
        return NamedSharding(mesh, leaf_spec(tuple(leaf.shape), strategy_of(path_name(path)),
                                             fsdp, tensor, min_size))

    return jax.tree_util.tree_map_with_path(one, tree)


def fsdp_undivided(tree: Any, fsdp_size: int, rules: Sequence[Sequence[str]] = DEFAULT_RULES,
                   min_size: int = 2 ** 14, tensor_size: int = 1) -> list[tuple[str, tuple]]:
    """(path, shape) of the leaves the rules give to 'fsdp' (or a tensor split) that 'fsdp' leaves
    whole because none of their (other) dimensions is divisible by ``fsdp_size`` (e.g. DiT-XL/2's
    1152 x 3456 attention kernels at fsdp 256: 1152 = 2^7 * 9)."""
    if fsdp_size <= 1:
        return []
    strategy_of = _compile_rules(rules)
    out = []

    def visit(path, leaf):
        shape = tuple(getattr(leaf, "shape", ()))
        strategy = strategy_of(path_name(path))
        if (shape and strategy != "replicate" and math.prod(shape) >= max(min_size, 1)
                and PARAM_AXIS not in leaf_spec(shape, strategy, fsdp_size, tensor_size,
                                                min_size)):
            out.append((path_name(path), shape))

    jax.tree_util.tree_map_with_path(visit, tree)
    return out


def fsdp_sizes_dividing(shapes: Sequence[Sequence[int]], num_devices: int) -> list[int]:
    """The fsdp sizes > 1 (divisors of ``num_devices``, largest first) under which every shape has a
    dimension divisible by the size, i.e. none of them stays replicated."""
    return [k for k in range(num_devices, 1, -1) if num_devices % k == 0
            and all(any(d % k == 0 and d >= k for d in shape) for shape in shapes)]


def auto_fsdp(axes: Mapping[str, Any], tree: Any, num_devices: int,
              rules: Sequence[Sequence[str]] = DEFAULT_RULES,
              min_size: int = 2 ** 14) -> dict:
    """``config.mesh`` with fsdp='auto' resolved: the largest fsdp size dividing the devices left by
    'tensor' under which every large leaf of ``tree`` (the train state or its params) is sharded
    (none stays replicated by divisibility, ``fsdp_undivided``); 'data' takes the remaining
    devices. E.g. DiT-XL/2 on 256 chips: fsdp 256 leaves the width-1152 matrices whole, so
    fsdp 128, data 2. Other meshes are returned unchanged."""
    axes = dict(axes)
    if axes.get(PARAM_AXIS) != "auto":
        return axes
    if int(axes.get("data", -1)) != -1:
        raise ValueError(f"config.mesh {axes}: fsdp='auto' needs data=-1 (the devices it leaves)")
    tensor = int(axes.get(MODEL_AXIS, 1))
    if tensor < 1 or num_devices % tensor:
        raise ValueError(f"config.mesh {axes}: tensor={tensor} does not divide {num_devices} devices")
    room = num_devices // tensor
    for k in range(room, 0, -1):
        if room % k == 0 and not fsdp_undivided(tree, k, rules, min_size, tensor):
            axes[PARAM_AXIS] = k
            return axes
    axes[PARAM_AXIS] = 1
    return axes


def tracing_mesh(fn, mesh: Mesh | None):
    """``fn`` traced under ``mesh`` (its abstract mesh), so the models' activation constraints
    (models/partitioning.py) resolve their logical axes; the identity for ``mesh=None``."""
    if mesh is None:
        return fn

    @functools.wraps(fn)
    def traced(*args, **kwargs):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args, **kwargs)

    return traced


def to_global(local_batch: Any, sharding: NamedSharding) -> Any:
    """Assemble each process's slice of the batch (numpy) into one global jax.Array per leaf."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                        local_batch)


def abstract(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying shardings: the input of ``.lower()`` and of a sharded restore."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                        shardings)
