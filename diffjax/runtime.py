"""Process settings for XLA:CPU that have to be in place when the process starts: the allocator.

XLA:CPU allocates each executable's temporary buffer (the bench U-Net's train step: 1.0 GB at batch
32 in the bench's 2 gradient slices, 1.8 GB unsliced) afresh on every call and frees it after. Under glibc's
malloc a buffer that large is a fresh mmap each time, so every step page-faults it in again, in
4 KiB pages (BENCHMARKS.md: ~140k faults and 0.26 s of kernel time per step, plus the TLB misses
of small pages). Two settings fix this, best first:

- ``jemalloc``: preload jemalloc (``apt-get install libjemalloc2``, or ``DIFFJAX_JEMALLOC=path``)
  with ``MALLOC_CONF=`` ``JEMALLOC_CONF``: huge pages for its mappings (``thp:always``, which is
  madvise, so it works in THP's default 'madvise' mode), no separate eagerly-purged arena for big
  blocks (``oversize_threshold:0``) and freed pages kept for reuse (``dirty_decay_ms:-1``). The
  temporary buffer then stays mapped, in huge pages, from one step to the next: no faults at all,
  and nothing for the kernel to compact when another process has used the memory in between. The
  process keeps its peak footprint (what a training or sampling run needs again every step).
- ``hugetlb``: glibc's tunable ``glibc.malloc.hugetlb=1`` (where THP is in 'madvise' mode):
  malloc's mmaps ask for huge pages, 512x fewer faults, but each step still maps the buffer anew.

Bench U-Net train step on the Zen 5 machine of BENCHMARKS.md, alone: 1.43 s with glibc's default,
1.27 s with ``hugetlb``, 1.13 s with ``jemalloc``. Both are read once, when the process starts, so
the ``diffjax`` command re-executes itself with the first that applies (``maybe_reexec``).
``DIFFJAX_MALLOC=jemalloc|hugetlb|default`` picks one (``auto``, the default, takes the first that
applies); ``DIFFJAX_MALLOC_TUNING=0`` is the same as ``default``. No module imported by a library
user's own program does anything of the kind.
"""
from __future__ import annotations

import ctypes.util
import os
import platform
import sys
from typing import Mapping, Optional, Sequence

HUGETLB = "glibc.malloc.hugetlb=1"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
JEMALLOC_CONF = "thp:always,oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:-1"
JEMALLOC_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64",
                 "/usr/local/lib", "/usr/lib")
ALLOCATORS = ("auto", "jemalloc", "hugetlb", "default")


def thp_mode(path: str = THP_MODE_FILE) -> Optional[str]:
    """The bracketed choice in the kernel's THP setting ('always', 'madvise', 'never'), or None."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def find_jemalloc(environ: Mapping[str, str], dirs: Sequence[str] = JEMALLOC_DIRS) -> Optional[str]:
    """Path of the jemalloc shared library: ``DIFFJAX_JEMALLOC`` if set (a missing file is an
    error), else ``libjemalloc.so.2`` in the usual library directories or the linker's cache."""
    given = environ.get("DIFFJAX_JEMALLOC", "")
    if given:
        if not os.path.isfile(given):
            raise FileNotFoundError(
                f"DIFFJAX_JEMALLOC={given!r} is not a file; point it at libjemalloc.so.2 "
                "(apt-get install libjemalloc2) or unset it")
        return given
    for d in dirs:
        path = os.path.join(d, "libjemalloc.so.2")
        if os.path.isfile(path):
            return path
    name = ctypes.util.find_library("jemalloc")
    return name or None


def _linux_glibc() -> bool:
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def allocator_choice(environ: Mapping[str, str]) -> str:
    """The allocator asked for: ``DIFFJAX_MALLOC`` (one of ``ALLOCATORS``), 'default' when
    ``DIFFJAX_MALLOC_TUNING=0``."""
    if environ.get("DIFFJAX_MALLOC_TUNING", "1") == "0":
        return "default"
    choice = environ.get("DIFFJAX_MALLOC", "auto")
    if choice not in ALLOCATORS:
        raise ValueError(f"DIFFJAX_MALLOC={choice!r} is not one of {ALLOCATORS}")
    return choice


def jemalloc_env(environ: Mapping[str, str], path: str) -> dict:
    """``environ`` with ``path`` first in LD_PRELOAD and ``JEMALLOC_CONF`` in front of MALLOC_CONF
    (options the caller already set there come later and win)."""
    env = dict(environ)
    env["LD_PRELOAD"] = " ".join(p for p in (path, environ.get("LD_PRELOAD", "")) if p)
    env["MALLOC_CONF"] = ",".join(c for c in (JEMALLOC_CONF, environ.get("MALLOC_CONF", "")) if c)
    return env


def hugetlb_env(environ: Mapping[str, str]) -> dict:
    """``environ`` with ``glibc.malloc.hugetlb=1`` added to GLIBC_TUNABLES."""
    env = dict(environ)
    env["GLIBC_TUNABLES"] = ":".join(t for t in (environ.get("GLIBC_TUNABLES", ""), HUGETLB) if t)
    return env


def cpu_malloc_env(environ: Mapping[str, str], thp: Optional[str] = None,
                   jemalloc: Optional[str] = "find") -> Optional[dict]:
    """``environ`` with the allocator setting of ``allocator_choice`` applied, or None when it
    would change nothing: 'default', not Linux with glibc, jemalloc already preloaded or a
    hugetlb tunable already set (so a re-executed process stops here), or nothing that applies.
    'auto' takes jemalloc where it is installed, else ``hugetlb`` where THP is in 'madvise' mode
    ('always' uses huge pages already, 'never' has none). ``jemalloc``: its path, None for not
    installed, 'find' to look (``find_jemalloc``). Asking for 'jemalloc' where it is not installed
    is an error that says how to install it."""
    choice = allocator_choice(environ)
    if choice == "default" or not _linux_glibc():
        return None
    if "jemalloc" in environ.get("LD_PRELOAD", "") or "glibc.malloc.hugetlb" in environ.get(
            "GLIBC_TUNABLES", ""):
        return None
    if choice in ("auto", "jemalloc"):
        path = find_jemalloc(environ) if jemalloc == "find" else jemalloc
        if path:
            return jemalloc_env(environ, path)
        if choice == "jemalloc":
            raise FileNotFoundError("DIFFJAX_MALLOC=jemalloc but no libjemalloc.so.2 was found: "
                                    "apt-get install libjemalloc2, or set DIFFJAX_JEMALLOC=path")
    if (thp if thp is not None else thp_mode()) != "madvise":
        return None
    return hugetlb_env(environ)


ACCELERATOR_DEVICES = ("accel0", "vfio", "nvidia0", "nvidiactl", "kfd")   # TPU, TPU v5+, CUDA, ROCm


def cpu_backend(environ: Mapping[str, str], dev: str = "/dev") -> bool:
    """Whether JAX will compute on the CPU, decided without importing it: ``JAX_PLATFORMS`` when
    set (its first entry), else no TPU or GPU device file under ``dev``."""
    platforms = environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip().lower() == "cpu"
    return not any(os.path.exists(os.path.join(dev, name)) for name in ACCELERATOR_DEVICES)


def maybe_reexec(module: str, argv: Sequence[str]) -> None:
    """Re-run ``python -m module argv[1:]`` with ``cpu_malloc_env`` if it changes anything; returns
    only when it does not (or when exec fails, in which case the process goes on untuned). The
    automatic choice ('auto') applies only where JAX computes on the CPU (``cpu_backend``): on a
    TPU or GPU host XLA's device buffers are not malloc'd and the host allocator is left alone."""
    if allocator_choice(os.environ) == "auto" and not cpu_backend(os.environ):
        return
    env = cpu_malloc_env(os.environ)
    if env is None:
        return
    try:
        os.execve(sys.executable, [sys.executable, "-m", module, *argv[1:]], env)
    except OSError:
        return
