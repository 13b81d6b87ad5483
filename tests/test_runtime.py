"""diffjax.runtime: the huge-page malloc tunable the CLI re-executes itself with."""
import os
import subprocess
import sys

import pytest

from diffjax import runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
linux_glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or runtime.platform.libc_ver()[0] != "glibc",
    reason="glibc tunables exist only with glibc on Linux")


@linux_glibc
def test_env_adds_the_tunable_only_where_it_helps():
    env = runtime.cpu_malloc_env({"PATH": "/bin"}, thp="madvise")
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": runtime.HUGETLB}
    kept = runtime.cpu_malloc_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, thp="madvise")
    assert kept["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:" + runtime.HUGETLB
    assert runtime.cpu_malloc_env({}, thp="always") is None
    assert runtime.cpu_malloc_env({}, thp="never") is None
    assert runtime.cpu_malloc_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, thp="madvise") is None
    assert runtime.cpu_malloc_env({"DIFFJAX_MALLOC_TUNING": "0"}, thp="madvise") is None


def test_thp_mode_reads_the_bracketed_choice(tmp_path):
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    assert runtime.thp_mode(str(f)) == "madvise"
    assert runtime.thp_mode(str(tmp_path / "missing")) is None


@linux_glibc
def test_maybe_reexec_runs_the_module_again_with_the_tunable(tmp_path):
    """maybe_reexec (what ``diffjax``'s main calls first) starts ``python -m module`` again with
    GLIBC_TUNABLES set, once; DIFFJAX_MALLOC_TUNING=0 keeps the process as it is."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import os, sys\n"
        f"sys.path.insert(0, {ROOT!r})\n"
        "from diffjax import runtime\n"
        "runtime.thp_mode = lambda *a: 'madvise'\n"
        "print('TUNABLES=' + os.environ.get('GLIBC_TUNABLES', ''), flush=True)\n"
        "runtime.maybe_reexec('probe_target', sys.argv)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "DIFFJAX_MALLOC_TUNING")}
    target = tmp_path / "probe_target.py"
    target.write_text("import os\nprint('CHILD=' + os.environ.get('GLIBC_TUNABLES', ''))\n")
    out = subprocess.run([sys.executable, str(probe)], env={**env, "PYTHONPATH": str(tmp_path)},
                         capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["TUNABLES=", "CHILD=" + runtime.HUGETLB]
    off = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, timeout=60,
                         env={**env, "PYTHONPATH": str(tmp_path), "DIFFJAX_MALLOC_TUNING": "0"},
                         cwd=str(tmp_path))
    assert off.stdout.splitlines() == ["TUNABLES="]


@linux_glibc
def test_bench_gives_both_workers_the_same_malloc_setting(monkeypatch):
    from bench import harness
    monkeypatch.setattr(runtime, "thp_mode", lambda *a: "madvise")
    base = {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.arena_max=1"}
    assert harness.malloc_env(base, "hugetlb")["GLIBC_TUNABLES"] == runtime.HUGETLB
    assert "GLIBC_TUNABLES" not in harness.malloc_env(base, "default")
    monkeypatch.setattr(harness, "MALLOC", "hugetlb")
    env = harness.worker_env()
    assert env["GLIBC_TUNABLES"] == runtime.HUGETLB and env["OMP_NUM_THREADS"] == "2"
    with pytest.raises(ValueError, match="malloc 'jemalloc'"):
        harness.malloc_env(base, "jemalloc")


def test_bench_train_slices_reads_a_valid_count(monkeypatch):
    from bench import diffjax_side, spec
    monkeypatch.delenv("BENCH_TRAIN_SLICES", raising=False)
    assert diffjax_side.train_slices() == spec.TRAIN_SLICES
    monkeypatch.setenv("BENCH_TRAIN_SLICES", "8")
    assert diffjax_side.train_slices() == 8
    for bad in ("0", "5", "x"):
        monkeypatch.setenv("BENCH_TRAIN_SLICES", bad)
        with pytest.raises(ValueError, match="BENCH_TRAIN_SLICES"):
            diffjax_side.train_slices()
