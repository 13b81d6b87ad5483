"""diffjax.runtime: the allocator setting (jemalloc, or glibc's huge-page tunable) the CLI re-executes
itself with."""
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
    env = runtime.cpu_malloc_env({"PATH": "/bin"}, thp="madvise", jemalloc=None)
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": runtime.HUGETLB}
    kept = runtime.cpu_malloc_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, thp="madvise",
                                  jemalloc=None)
    assert kept["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:" + runtime.HUGETLB
    assert runtime.cpu_malloc_env({}, thp="always", jemalloc=None) is None
    assert runtime.cpu_malloc_env({}, thp="never", jemalloc=None) is None
    assert runtime.cpu_malloc_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, thp="madvise",
                                  jemalloc=None) is None
    assert runtime.cpu_malloc_env({"DIFFJAX_MALLOC_TUNING": "0"}, thp="madvise") is None
    assert runtime.cpu_malloc_env({"DIFFJAX_MALLOC": "default"}, thp="madvise") is None


@linux_glibc
def test_jemalloc_comes_first_where_installed_and_keeps_the_users_settings():
    lib = "/opt/lib/libjemalloc.so.2"
    env = runtime.cpu_malloc_env({"LD_PRELOAD": "/x/libfoo.so", "MALLOC_CONF": "narenas:2"},
                                 thp="never", jemalloc=lib)
    assert env["LD_PRELOAD"] == lib + " /x/libfoo.so"
    assert env["MALLOC_CONF"] == runtime.JEMALLOC_CONF + ",narenas:2"   # the user's options win
    assert "GLIBC_TUNABLES" not in env
    # a process that already runs under it is left alone (no re-exec loop)
    assert runtime.cpu_malloc_env(env, thp="madvise", jemalloc=lib) is None
    # hugetlb asked for: jemalloc is not used even where installed
    env = runtime.cpu_malloc_env({"DIFFJAX_MALLOC": "hugetlb"}, thp="madvise", jemalloc=lib)
    assert env["GLIBC_TUNABLES"] == runtime.HUGETLB and "LD_PRELOAD" not in env
    with pytest.raises(FileNotFoundError, match="apt-get install libjemalloc2"):
        runtime.cpu_malloc_env({"DIFFJAX_MALLOC": "jemalloc"}, thp="madvise", jemalloc=None)
    with pytest.raises(ValueError, match="DIFFJAX_MALLOC='tcmalloc'"):
        runtime.cpu_malloc_env({"DIFFJAX_MALLOC": "tcmalloc"}, thp="madvise")


@linux_glibc
def test_a_process_started_with_the_jemalloc_env_runs_under_jemalloc():
    """The real library, where installed: the child maps it, accepts JEMALLOC_CONF (jemalloc
    reports an option it does not know on stderr) and computes as usual."""
    lib = runtime.find_jemalloc({})
    if not lib:
        pytest.skip("libjemalloc.so.2 is not installed (apt-get install libjemalloc2)")
    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
    code = ("import numpy as np\n"
            "a = np.ones(50_000_000, np.float32); del a\n"
            "b = np.ones(50_000_000, np.float32)\n"
            "print(int(b.sum(dtype=np.float64)))\n"
            "print(any('jemalloc' in row for row in open('/proc/self/maps')))\n")
    out = subprocess.run([sys.executable, "-c", code], env=runtime.jemalloc_env(base, lib),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["50000000", "True"]
    assert "<jemalloc>" not in out.stderr, out.stderr


def test_find_jemalloc_honours_the_override_and_the_library_dirs(tmp_path):
    lib = tmp_path / "libjemalloc.so.2"
    with pytest.raises(FileNotFoundError, match="DIFFJAX_JEMALLOC"):
        runtime.find_jemalloc({"DIFFJAX_JEMALLOC": str(lib)})
    lib.write_bytes(b"")
    assert runtime.find_jemalloc({"DIFFJAX_JEMALLOC": str(lib)}) == str(lib)
    assert runtime.find_jemalloc({}, dirs=(str(tmp_path / "none"), str(tmp_path))) == str(lib)


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
        "runtime.find_jemalloc = lambda *a: None\n"
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
    monkeypatch.setattr(runtime, "find_jemalloc", lambda *a: None)
    base = {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.arena_max=1", "MALLOC_CONF": "x:1",
            "LD_PRELOAD": "/old/libjemalloc.so.2 /x/libfoo.so"}
    hug = harness.malloc_env(base, "hugetlb")
    assert hug["GLIBC_TUNABLES"] == runtime.HUGETLB and hug["LD_PRELOAD"] == "/x/libfoo.so"
    assert harness.malloc_used(hug) == "hugetlb"
    assert harness.malloc_used(harness.malloc_env(base, "auto")) == "hugetlb"
    plain = harness.malloc_env(base, "default")
    assert "GLIBC_TUNABLES" not in plain and "MALLOC_CONF" not in plain
    assert harness.malloc_used(plain) == "default"
    monkeypatch.setattr(harness, "MALLOC", "hugetlb")
    env = harness.worker_env()
    assert env["GLIBC_TUNABLES"] == runtime.HUGETLB and env["OMP_NUM_THREADS"] == "2"
    with pytest.raises(ValueError, match="malloc 'tcmalloc'"):
        harness.malloc_env(base, "tcmalloc")
    monkeypatch.setattr(runtime, "find_jemalloc", lambda *a: "/lib/libjemalloc.so.2")
    je = harness.malloc_env(base, "auto")
    assert je["LD_PRELOAD"] == "/lib/libjemalloc.so.2 /x/libfoo.so"
    assert je["MALLOC_CONF"] == runtime.JEMALLOC_CONF and harness.malloc_used(je) == "jemalloc"


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


@linux_glibc
@pytest.mark.parametrize("env, message", [
    ({"DIFFJAX_MALLOC": "tcmalloc"}, "DIFFJAX_MALLOC='tcmalloc' is not one of"),
    ({"DIFFJAX_JEMALLOC": "/nonexistent/libjemalloc.so.2"}, "DIFFJAX_JEMALLOC="),
])
def test_cli_names_a_bad_allocator_setting_instead_of_a_traceback(env, message):
    """The ``diffjax`` command's re-exec step turns a bad DIFFJAX_MALLOC / DIFFJAX_JEMALLOC into a
    one-line error and exit status 1, before any work starts."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("DIFFJAX_MALLOC", "DIFFJAX_MALLOC_TUNING", "DIFFJAX_JEMALLOC", "LD_PRELOAD",
                         "MALLOC_CONF", "GLIBC_TUNABLES")}
    out = subprocess.run([sys.executable, "-c", "from diffjax import cli; cli.main()", "train"],
                         env={**base, **env, "PYTHONPATH": ROOT}, capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 1, out.stderr
    assert "diffjax: error:" in out.stderr and message in out.stderr
    assert "Traceback" not in out.stderr


def test_bench_run_names_an_allocator_that_is_not_installed(monkeypatch):
    from bench import harness, run
    monkeypatch.setattr(harness, "MALLOC", harness.MALLOC)   # run.main sets it; restored after
    monkeypatch.setattr(runtime, "find_jemalloc", lambda *a: None)
    monkeypatch.setattr(runtime, "_linux_glibc", lambda: True)
    with pytest.raises(SystemExit, match="--malloc jemalloc: DIFFJAX_MALLOC=jemalloc but no libjemalloc"):
        run.main(["--malloc", "jemalloc", "--workloads", "train", "--no-peer"])


def test_allocator_reexec_only_where_jax_computes_on_the_cpu(tmp_path):
    assert runtime.cpu_backend({"JAX_PLATFORMS": "cpu"}, dev=str(tmp_path))
    assert not runtime.cpu_backend({"JAX_PLATFORMS": "tpu,cpu"}, dev=str(tmp_path))
    assert runtime.cpu_backend({}, dev=str(tmp_path))               # no accelerator device files
    (tmp_path / "nvidia0").write_text("")
    assert not runtime.cpu_backend({}, dev=str(tmp_path))           # a GPU host
    assert runtime.cpu_backend({"JAX_PLATFORMS": "cpu"}, dev=str(tmp_path))   # told to use the CPU
