"""Process settings for XLA:CPU that have to be in place when the process starts.

XLA:CPU allocates each executable's temporary buffer (the bench U-Net's train step: ~1.8 GB at batch
32) afresh on every call and frees it after; glibc serves that from a fresh mmap, so every step
page-faults the whole buffer in 4 KiB pages again (BENCHMARKS.md: ~470k faults and ~1 s of kernel
time per step). Where transparent huge pages are in ``madvise`` mode (the default of most
distributions), glibc's tunable ``glibc.malloc.hugetlb=1`` makes malloc ask for huge pages on its
mmaps: 512x fewer faults and fewer TLB misses. The train step of the bench U-Net ran 1.5x faster with
it, and PyTorch 1.1x (same machine, same run). A tunable is read once, when the process starts, so
the ``diffjax`` command re-executes itself with it (``maybe_reexec``); ``DIFFJAX_MALLOC_TUNING=0``
turns this off. No module imported by a library user's own program does anything of the kind.
"""
from __future__ import annotations

import os
import platform
import sys
from typing import Mapping, Optional, Sequence

HUGETLB = "glibc.malloc.hugetlb=1"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp_mode(path: str = THP_MODE_FILE) -> Optional[str]:
    """The bracketed choice in the kernel's THP setting ('always', 'madvise', 'never'), or None."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def cpu_malloc_env(environ: Mapping[str, str], thp: Optional[str] = None) -> Optional[dict]:
    """``environ`` with ``glibc.malloc.hugetlb=1`` added to GLIBC_TUNABLES, or None when it would
    change nothing: opted out (DIFFJAX_MALLOC_TUNING=0), a hugetlb tunable already set, not Linux
    with glibc, or THP not in 'madvise' mode ('always' uses huge pages already, 'never' has none)."""
    if environ.get("DIFFJAX_MALLOC_TUNING", "1") == "0":
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in tunables:
        return None
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    if (thp if thp is not None else thp_mode()) != "madvise":
        return None
    env = dict(environ)
    env["GLIBC_TUNABLES"] = ":".join(t for t in (tunables, HUGETLB) if t)
    return env


def maybe_reexec(module: str, argv: Sequence[str]) -> None:
    """Re-run ``python -m module argv[1:]`` with ``cpu_malloc_env`` if it changes anything; returns
    only when it does not (or when exec fails, in which case the process goes on untuned)."""
    env = cpu_malloc_env(os.environ)
    if env is None:
        return
    try:
        os.execve(sys.executable, [sys.executable, "-m", module, *argv[1:]], env)
    except OSError:
        return
