"""Pod readiness without a pod: compile the real sharded train step and sampling loop for a device
list (a deviceless TPU topology, or this machine's CPUs) and read XLA's memory and cost analyses.

The train step is ``training.step.make_train_step`` - the very function the trainer jits - lowered on
abstract, born-sharded state and batch, so the shardings reported here are the ones a run uses.
Estimated step time: XLA's ``optimal_seconds`` when it reports one, otherwise the roofline
max(FLOPs / peak FLOP/s, bytes accessed / HBM bandwidth) - a lower bound on the time, so the implied
utilization FLOPs / (time * peak) is an upper bound (100% = compute-bound under the roofline).
XLA's cost analysis counts a while loop's body once: the sampling loop's FLOPs and time are per
sampler step (one iteration of the scan); multiply by the number of steps for the whole loop.
"""
from __future__ import annotations

import dataclasses
import math
import re
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.preflight import chips as chips_lib

FIT_FRACTION = 0.95  # leave headroom for the runtime's own buffers


@dataclasses.dataclass
class Compiled:
    name: str
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    flops: float
    bytes_accessed: float
    optimal_seconds: float | None
    oom: str | None = None          # the compiler's out-of-memory message, if it refused to compile
    compile_seconds: float = 0.0    # wall time of lowering + compiling here

    @property
    def peak_bytes(self) -> int:
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes


@dataclasses.dataclass
class Report:
    target: str
    num_devices: int
    mesh_shape: dict
    hbm_bytes: int | None
    peak_flops: float | None
    bandwidth: float | None
    programs: list
    state_bytes_per_device: int
    largest_leaves: list          # (path, spec, bytes per device)
    state_specs: dict             # path -> PartitionSpec string
    undivided: list = dataclasses.field(default_factory=list)  # (path, shape, bytes): see below
    fsdp_hint: int | None = None  # an fsdp size that leaves none of ``undivided`` replicated
    flops_note: str | None = None  # how FLOPs were obtained when not from the compile alone

    def undivided_warning(self) -> str | None:
        """The state arrays the 'fsdp' rule meant to split but could not: no dimension is divisible
        by the fsdp size, so every device holds them whole (with their optimizer moments and EMAs)."""
        if not self.undivided:
            return None
        fsdp = self.mesh_shape.get("fsdp", 1)
        total = sum(b for _, _, b in self.undivided)
        name, shape, _ = max(self.undivided, key=lambda u: u[2])
        msg = (f"warning: {len(self.undivided)} train-state arrays ({_gib(total).strip()} per device) "
               f"stay replicated: no dimension is divisible by fsdp={fsdp} (largest: {name} "
               f"{tuple(shape)}).")
        if self.fsdp_hint:
            msg += (f" fsdp={self.fsdp_hint} divides them all: --config.mesh.fsdp={self.fsdp_hint} "
                    f"--config.mesh.data={self.num_devices // self.fsdp_hint}, or let the run "
                    f"pick it: --config.mesh.fsdp=auto.")
        else:
            msg += " No fsdp size that divides the device count splits them all."
        return msg

    def fits(self) -> bool:
        if self.hbm_bytes is None:
            return True
        return all(p.oom is None and p.peak_bytes <= FIT_FRACTION * self.hbm_bytes
                   for p in self.programs)

    def step_seconds(self, p: Compiled) -> float | None:
        if p.optimal_seconds is not None and p.optimal_seconds > 0:
            return p.optimal_seconds
        if not self.peak_flops:
            return None
        return max(p.flops / self.peak_flops, p.bytes_accessed / self.bandwidth)

    def time_source(self, p: Compiled) -> str:
        """'xla' (XLA's optimal_seconds), 'compute' / 'memory' (which roofline term binds), or '-'."""
        if p.optimal_seconds is not None and p.optimal_seconds > 0:
            return "xla"
        if not self.peak_flops:
            return "-"
        return "compute" if p.flops / self.peak_flops >= p.bytes_accessed / self.bandwidth else "memory"

    def as_dict(self) -> dict:
        out = {"target": self.target, "devices": self.num_devices, "mesh": self.mesh_shape,
               "hbm_bytes_per_device": self.hbm_bytes, "fits": self.fits(),
               "state_bytes_per_device": self.state_bytes_per_device, "programs": {},
               "undivided": [{"path": n, "shape": list(sh), "bytes_per_device": b}
                             for n, sh, b in self.undivided], "fsdp_hint": self.fsdp_hint,
               "flops_note": self.flops_note}
        for p in self.programs:
            t = self.step_seconds(p)
            out["programs"][p.name] = {
                "argument_bytes": p.argument_bytes, "output_bytes": p.output_bytes,
                "alias_bytes": p.alias_bytes, "temp_bytes": p.temp_bytes,
                "peak_bytes": p.peak_bytes, "flops_per_device": p.flops,
                "bytes_accessed": p.bytes_accessed, "xla_optimal_seconds": p.optimal_seconds,
                "est_seconds": t, "est_source": self.time_source(p),
                "compile_seconds": p.compile_seconds,
                "utilization": (p.flops / (t * self.peak_flops)) if (t and self.peak_flops) else None}
        return out


def _gib(b):
    return f"{b / 2 ** 30:8.2f} GiB"


def format_table(r: Report) -> str:
    lines = [f"target {r.target}: {r.num_devices} devices, mesh {r.mesh_shape}"
             + (f", HBM {_gib(r.hbm_bytes).strip()} per device" if r.hbm_bytes else "")]
    hdr = (f"{'program':<12}{'argument':>14}{'temp':>14}{'output':>14}{'peak':>14}"
           f"{'HBM use':>9}{'TFLOP/dev':>11}{'est. s':>10}{'from':>9}{'util':>7}")
    lines += [hdr, "-" * len(hdr)]
    for p in r.programs:
        t = r.step_seconds(p)
        use = f"{100 * p.peak_bytes / r.hbm_bytes:7.1f}%" if r.hbm_bytes else "      -"
        util = (f"{100 * p.flops / (t * r.peak_flops):6.1f}%" if (t and r.peak_flops) else "     -")
        lines.append(f"{p.name:<12}{_gib(p.argument_bytes):>14}{_gib(p.temp_bytes):>14}"
                     f"{_gib(p.output_bytes):>14}{_gib(p.peak_bytes):>14}{use:>9}"
                     f"{p.flops / 1e12:11.3f}{(t if t else float('nan')):10.4f}"
                     f"{r.time_source(p):>9}{util:>7}")
    for p in r.programs:
        if p.oom:
            lines.append(f"{p.name}: does not fit - {p.oom}")
    if any(p.name == "sample_loop" for p in r.programs):
        lines.append("sample_loop FLOPs and time are per sampler step (XLA counts the scan body once)")
    lines.append("est. s: XLA's estimate ('xla') or the roofline lower bound (its binding term); util = "
                 "FLOPs / (est. s * peak bf16 FLOP/s), an upper bound")
    if r.flops_note:
        lines.append(r.flops_note)
    lines.append(f"train state per device: {_gib(r.state_bytes_per_device).strip()}; "
                 f"fits: {'yes' if r.fits() else 'NO'}")
    if r.undivided_warning():
        lines.append(r.undivided_warning())
    return "\n".join(lines)


_OOM = re.compile(r"(HLO temporaries|total memory)[^(]*\(([\d.]+)([KMGT]?)\)")


def _analyse(name: str, lower) -> Compiled:
    """Compile ``lower()`` and read its analyses; an HBM out-of-memory refusal becomes a no-fit."""
    t0 = time.perf_counter()
    try:
        compiled = lower().compile()
    except Exception as e:  # XLA:TPU refuses programs that cannot fit, naming the bytes needed
        msg = str(e)
        if "RESOURCE_EXHAUSTED" not in msg and "Ran out of memory" not in msg:
            raise
        m = _OOM.search(msg)
        need = 0
        if m:
            need = int(float(m.group(2)) * 2 ** (10 * " KMGT".index(m.group(3) or " ")))
        return Compiled(name=name, argument_bytes=0, output_bytes=0, alias_bytes=0, temp_bytes=need,
                        flops=0.0, bytes_accessed=0.0, optimal_seconds=None,
                        oom=msg.strip().splitlines()[0][:400],
                        compile_seconds=time.perf_counter() - t0)
    m = compiled.memory_analysis()
    ca = compiled.cost_analysis()
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else {}
    ca = ca or {}
    opt = ca.get("optimal_seconds")
    return Compiled(name=name, argument_bytes=int(m.argument_size_in_bytes),
                    output_bytes=int(m.output_size_in_bytes), alias_bytes=int(m.alias_size_in_bytes),
                    temp_bytes=int(m.temp_size_in_bytes), flops=float(ca.get("flops", 0.0)),
                    bytes_accessed=float(ca.get("bytes accessed", 0.0)),
                    optimal_seconds=float(opt) if opt is not None else None,
                    compile_seconds=time.perf_counter() - t0)


def _leaf_table(abstract_state) -> tuple[int, list, dict]:
    from diffjax.training.sharding import path_name

    rows, specs = [], {}

    def visit(path, leaf):
        if not hasattr(leaf, "shape"):
            return
        sh = leaf.sharding
        shard = sh.shard_shape(leaf.shape) if hasattr(sh, "shard_shape") else leaf.shape
        nbytes = int(np.prod(shard)) * jnp.dtype(leaf.dtype).itemsize
        name = path_name(path)
        specs[name] = str(getattr(sh, "spec", ""))
        rows.append((name, specs[name], nbytes))

    jax.tree_util.tree_map_with_path(visit, abstract_state)
    rows.sort(key=lambda r: -r[2])
    return sum(r[2] for r in rows), rows[:8], specs


def run(config, devices: Sequence[Any], *, target: str = "cpu", chip: chips_lib.Chip | None = None,
        per_device_hbm: int | None = None, sample: bool = True) -> Report:
    """Compile the config's train step (and sampling loop) over ``devices`` and analyse it."""
    from diffjax.models import registry as model_registry
    from diffjax.training import step as step_lib

    if "input_shape" not in config.model or not config.model.input_shape:
        raise ValueError("config.model.input_shape is needed to compile without data "
                         "(e.g. (32, 32, 4) for a 256px latent DiT)")
    example_shape = tuple(config.model.input_shape)
    model = model_registry.build_model(config.model)
    mesh = step_lib.make_mesh(config, model, example_shape, devices)
    ts = step_lib.make_train_step(config, model, mesh, example_shape=example_shape)
    programs = [_analyse("train_step",
                         lambda: ts.jit_step().lower(ts.abstract_state, ts.abstract_batch))]
    if sample:
        programs.append(_analyse("sample_loop", lambda: _lower_sampler(config, ts, example_shape)))
    note = None
    if config.model.get("scan_layers") and isinstance(config.model.get("depth"), int):
        programs = _depth_corrected(config, mesh, example_shape, programs)
        note = (f"scanned layers: FLOPs and bytes accessed of all {config.model.depth} layers, "
                "extrapolated from the scanned and the unrolled depth-2 compiles (XLA counts "
                "a loop body once); memory from the scanned compile")
    total, largest, specs = _leaf_table(ts.abstract_state)
    undivided, hint = _undivided(config, ts.abstract_state, dict(mesh.shape), len(devices))
    return Report(target=target, num_devices=len(devices), mesh_shape=dict(mesh.shape),
                  hbm_bytes=per_device_hbm, peak_flops=None if chip is None else chip.peak_bf16_flops,
                  bandwidth=None if chip is None else chip.hbm_bandwidth, programs=programs,
                  state_bytes_per_device=total, largest_leaves=largest, state_specs=specs,
                  undivided=undivided, fsdp_hint=hint, flops_note=note)


def _depth_corrected(config, mesh, example_shape, programs):
    """FLOPs and bytes accessed of a scanned model's programs over all of its L layers.

    XLA's cost analysis counts a while loop's body once, so the scanned compile reports the work of
    one layer plus everything outside the loop: cost(1). Costs are linear in the depth, so one more
    compile, of the unrolled depth-2 model on the same mesh, gives the per-layer cost and
    cost(L) = cost(1) + (L - 1) (cost(2) - cost(1)). The scanned cost(1) is not exactly the unrolled
    depth-1 cost (the loop's own slicing): for DiT-XL/2 on v5p:4x4x4 the result is 0.2% (train
    step) and 0.9% (sampler step) below the unrolled count, where the unrolled depth-1 compile gave
    it exactly at one compile more (30-60 s). Memory stays the scanned compile's own. The
    sampler's figures stay per sampler step."""
    import copy

    from diffjax.models import registry as model_registry
    from diffjax.training import step as step_lib

    depth = int(config.model.depth)
    c = copy.deepcopy(config)
    c.model.depth, c.model.scan_layers = 2, False
    model = model_registry.build_model(c.model)
    ts = step_lib.make_train_step(c, model, mesh, example_shape=example_shape)
    lowers = {"train_step": lambda: ts.jit_step().lower(ts.abstract_state, ts.abstract_batch),
              "sample_loop": lambda: _lower_sampler(c, ts, example_shape)}
    out = []
    for one in programs:
        two = None if one.oom else _analyse(one.name, lowers[one.name])
        if two is None or two.oom:
            out.append(one)
            continue
        out.append(dataclasses.replace(
            one, flops=one.flops + (depth - 1) * (two.flops - one.flops),
            bytes_accessed=one.bytes_accessed + (depth - 1) * (two.bytes_accessed
                                                                - one.bytes_accessed),
            optimal_seconds=None))
    return out


def _undivided(config, abstract_state, mesh_shape: dict, num_devices: int):
    """(path, shape, bytes) of the state arrays left replicated by fsdp divisibility, largest first,
    and the largest fsdp size that would split them all (None if there are none or no such size)."""
    from diffjax.training import sharding

    found = sharding.fsdp_undivided(abstract_state, mesh_shape.get(sharding.PARAM_AXIS, 1),
                                    config.sharding.rules, config.sharding.min_size,
                                    mesh_shape.get(sharding.MODEL_AXIS, 1))
    if not found:
        return [], None
    nbytes = {sharding.path_name(path): int(np.prod(leaf.shape)) * jnp.dtype(leaf.dtype).itemsize
              for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_state)[0]
              if hasattr(leaf, "shape")}
    rows = sorted(((n, sh, nbytes[n]) for n, sh in found), key=lambda r: -r[2])
    hints = sharding.fsdp_sizes_dividing([sh for _, sh in found], num_devices)
    return rows, (hints[0] if hints else None)


def _lower_sampler(config, ts, example_shape):
    """The sampling loop as ``diffjax sample`` runs it (``inference.build``): scan over steps, the
    config's guidance batched, the batch split over the data axes, the params in the train step's
    shardings gathered once before the loop."""
    from diffjax import guidance, inference
    from diffjax.training import sharding

    batch = ts.micro_batch
    sec = guidance.resolve(config.sample.guidance if ts.conditional else None)
    if guidance.get(sec["name"]).prepare is not None and not guidance.split(sec)[0][1]:
        raise ValueError(f"preflight compiles the sampling loop without loading other runs, but "
                         f"config.sample.guidance.name={sec['name']!r} needs one (its network's "
                         f"params); pass --skip_sampler, or compile with "
                         f"--config.sample.guidance.name=classifier_free")
    prog = inference.build(ts.den, ts.process, sampler=config.sample.sampler,
                           steps=int(config.sample.steps), spacing=config.sample.spacing,
                           batch=batch, example_shape=example_shape, guidance=sec,
                           null_label=int(config.model.num_classes) if ts.conditional else None,
                           mesh=ts.mesh)
    rep = sharding.replicated(ts.mesh)
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=rep)
    labels = jax.ShapeDtypeStruct((prog.batch,), jnp.int32, sharding=ts.batch_sharding)
    offset = jax.ShapeDtypeStruct((), jnp.int32, sharding=rep)
    gvals = {k: jax.ShapeDtypeStruct((), jnp.float32, sharding=rep)
             for k in guidance.split(sec)[1]}
    return prog.fn.lower(ts.abstract_state.params, key, labels, offset, gvals, {}, None, None,
                         None)


def tpu(config, topology: str, *, sample: bool = True, num_slices: int = 1) -> Report:
    """Preflight on a deviceless TPU topology, e.g. 'v5p:4x4x4'; ``num_slices`` > 1 compiles for
    that many slices of it (``config.dcn_mesh`` says which axes span them)."""
    chip, dims = chips_lib.parse(topology)
    devs = chips_lib.devices(topology, num_slices)
    chips_total = math.prod(dims) * int(num_slices)
    per_device = chip.hbm_bytes * chips_total // len(devs)
    per_chip_scale = len(devs) / chips_total
    c = dataclasses.replace(chip, peak_bf16_flops=chip.peak_bf16_flops / per_chip_scale,
                            hbm_bandwidth=chip.hbm_bandwidth / per_chip_scale)
    target = topology if int(num_slices) == 1 else f"{num_slices} x {topology}"
    return run(config, devs, target=target, chip=c, per_device_hbm=per_device, sample=sample)


def advice(r: Report) -> str:
    """Why it does not fit, naming the largest buffers and the config knob to change."""
    worst = max(r.programs, key=lambda p: p.peak_bytes)
    lines = [f"{worst.name} needs {_gib(worst.peak_bytes).strip()} per device but "
             f"{_gib(FIT_FRACTION * r.hbm_bytes).strip()} is usable "
             f"({FIT_FRACTION:.0%} of {_gib(r.hbm_bytes).strip()} HBM)."]
    if worst.oom:
        lines.append(f"XLA refused to compile it: {worst.oom}")
    lines.append("largest train-state arrays per device (path, sharding spec, bytes):")
    for name, spec, b in r.largest_leaves[:5]:
        lines.append(f"  {name:<60} {spec:<28} {_gib(b).strip()}")
    fsdp = r.mesh_shape.get("fsdp", 1)
    if worst.temp_bytes >= worst.argument_bytes:
        lines.append(f"temporaries ({_gib(worst.temp_bytes).strip()}) dominate: lower config.batch_size "
                     "or raise config.optim.accum_steps (smaller micro-batch), or spread the batch over "
                     "more devices.")
    else:
        lines.append(f"the train state dominates: raise config.mesh.fsdp (now {fsdp}) so rule "
                     "('.*', 'fsdp') in config.sharding.rules splits parameters and optimizer moments "
                     "over more devices, or lower config.sharding.min_size.")
    if r.undivided_warning():
        lines.append(r.undivided_warning())
    return "\n".join(lines)
