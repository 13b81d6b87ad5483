"""The line protocol between ``bench.harness`` and a benchmark worker process (pure Python).

A worker builds one workload, prints a ``ready`` record (setup and first-call times), then answers
``run <n>`` lines with ``{"seconds", "images"}`` records and ``quit`` with its memory record. Records
are single JSON lines prefixed by ``@@BENCH`` so that library chatter on stdout cannot be mistaken
for them. Memory comes from /proc/self/status: VmRSS (current) and VmHWM (peak resident set); the
peak is reset after set-up (``/proc/self/clear_refs``) so ``run_peak_rss_mb`` covers the timed runs
only, while ``peak_rss_mb`` covers the whole process (compilation included).
"""
from __future__ import annotations

import json
import resource
import sys
import time

MARK = "@@BENCH "


def emit(record: dict, stream=None) -> None:
    stream = stream or sys.stdout
    stream.write(MARK + json.dumps(record) + "\n")
    stream.flush()


def parse(line: str):
    """The record on ``line``, or None if the line is not a protocol record."""
    line = line.strip()
    return json.loads(line[len(MARK):]) if line.startswith(MARK) else None


def _status_kb(field: str) -> float:
    try:
        with open("/proc/self/status") as f:
            for row in f:
                if row.startswith(field + ":"):
                    return float(row.split()[1])
    except OSError:
        pass
    return float("nan")


def rss_mb() -> float:
    return _status_kb("VmRSS") / 1024.0


def peak_rss_mb() -> float:
    return _status_kb("VmHWM") / 1024.0


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


WARM_CALLS = 5
WARM_SECONDS = 10.0


def serve(first_call, run, images_per_call: float, info: dict, warm: bool = True) -> None:
    """Time the first call, announce readiness, then serve ``run <n>`` requests until ``quit``.

    ``first_call()`` runs the workload once (compiling / warming up as needed); ``run(n)`` runs it n
    more times and must block until the results exist. ``images_per_call`` may be fractional: a
    sampling run cut to K of its N steps counts as K/N of its images (every step costs one network
    call, so images/s extrapolates to the full run).
    """
    whole_peak_before = peak_rss_mb()
    t0 = time.perf_counter()
    first_call()
    info = dict(info, first_call_s=time.perf_counter() - t0, images_per_call=images_per_call,
                setup_peak_rss_mb=max(whole_peak_before, peak_rss_mb()))
    if warm:
        # Untimed warm-up until steady state: diffjax's train step took ~5 calls to reach it (glibc's
        # mmap threshold and the kernel's huge-page pool settle), so both sides get WARM_CALLS calls,
        # or as many as fit in WARM_SECONDS, and at least one.
        t0, n = time.perf_counter(), 0
        while n < 1 or (n < WARM_CALLS and time.perf_counter() - t0 < WARM_SECONDS):
            run(1)
            n += 1
        info["warm_calls"] = n
    reset_peak_rss()
    emit(dict(info, event="ready"))
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "run":
            n = int(cmd[1]) if len(cmd) > 1 else 1
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            run(n)
            dt = time.perf_counter() - t0
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            emit({"event": "result", "seconds": dt, "images": n * images_per_call,
                  "minor_faults": r1.ru_minflt - r0.ru_minflt, "sys_s": r1.ru_stime - r0.ru_stime,
                  "user_s": r1.ru_utime - r0.ru_utime})
        elif cmd[0] == "quit":
            emit({"event": "memory", "rss_mb": rss_mb(), "run_peak_rss_mb": peak_rss_mb(),
                  "peak_rss_mb": max(info["setup_peak_rss_mb"], peak_rss_mb())})
            return
        else:
            emit({"event": "error", "message": f"unknown command {line.strip()!r}"})
