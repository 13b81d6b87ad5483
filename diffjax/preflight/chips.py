"""TPU chip specs and deviceless topologies for ahead-of-time compilation.

``devices('v5p:4x4x4')`` returns the abstract devices of that slice from libtpu
(``jax.experimental.topologies.get_topology_desc``) without any TPU attached, so a Mesh can be built
over them and real TPU executables compiled on a CPU machine.
Peak bf16 FLOP/s, HBM capacity and bandwidth per chip are Google Cloud's published figures.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re

GiB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    hbm_bytes: int
    peak_bf16_flops: float      # per chip
    hbm_bandwidth: float        # bytes/s per chip


CHIPS = {
    "v4": Chip("v4", 32 * GiB, 275e12, 1.2e12),
    "v5e": Chip("v5e", 16 * GiB, 197e12, 8.1e11),
    "v5p": Chip("v5p", 95 * GiB, 459e12, 2.765e12),
    "v6e": Chip("v6e", 32 * GiB, 918e12, 1.64e12),
}
_NAME = re.compile(r"^(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})$")


def parse(topology: str) -> tuple[Chip, tuple[int, ...]]:
    """'v5p:4x4x4' -> (Chip v5p, (4, 4, 4)); a clear ValueError for anything else."""
    m = _NAME.match(topology.strip())
    if not m:
        raise ValueError(f"unknown TPU topology {topology!r}: expected CHIP:AxB[xC] with CHIP one of "
                         f"{sorted(CHIPS)}, e.g. v5p:2x2x1, v5p:4x4x4, v5e:2x2, v5e:16x16, v6e:2x2")
    return CHIPS[m.group(1)], tuple(int(v) for v in m.group(2).split("x"))


def libtpu_available() -> bool:
    try:
        import libtpu  # noqa: F401
        return True
    except ImportError:
        return False


def devices(topology: str, num_slices: int = 1):
    """Abstract TPU devices of ``topology`` (needs the ``tpu`` extra: pip install -e '.[tpu]');
    ``num_slices`` > 1: that many slices of it (multi-slice, each device with its slice_index)."""
    chip, dims = parse(topology)
    if int(num_slices) < 1:
        raise ValueError(f"num_slices must be >= 1, got {num_slices}")
    if not libtpu_available():
        raise RuntimeError("deviceless TPU compilation needs libtpu: pip install -e '.[tpu]' "
                           "(jax[tpu] matching the installed jax)")
    # Deviceless compilation attaches to no chip: let several processes (parallel tests, a
    # preflight beside a training run) load libtpu without its single-process lockfile.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    try:
        kw = {"num_slices": int(num_slices)} if int(num_slices) > 1 else {}
        return list(topologies.get_topology_desc(platform="tpu", topology_name=topology,
                                                 **kw).devices)
    except Exception as e:  # libtpu's own message names the constraint (e.g. host bounds)
        raise ValueError(f"libtpu rejected topology {topology!r}: {e}") from None


def num_chips(topology: str) -> int:
    return math.prod(parse(topology)[1])
