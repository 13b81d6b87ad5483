"""A/B harness: run diffjax and the peer as two worker processes and alternate them.

For one (workload, dtype) both workers are started one after the other (so neither set-up competes
with the other for the CPU), each builds the workload, times its first call (compilation included)
and one warm call, and then waits. The harness then asks A (diffjax) and B (diffusers) in turn for
``iters`` calls each, ``reps`` times: A B A B ... Throughput is images/s per call batch; the ratio is
computed per repetition from the adjacent A and B runs and the median over repetitions is reported.
Nothing here imports jax or torch: the diffjax worker runs under this interpreter
(``python -m bench.diffjax_side``), the peer under the interpreter that the environment variable
``BENCH_PEER_PYTHON`` names (a virtualenv with ``spec.PEER_REQUIREMENTS``; ``make_peer_env`` creates
one). There is no default: without it only ``--no-peer`` runs.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys

from bench import spec, worker_io
from diffjax import runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER_ENV = "BENCH_PEER_PYTHON"
THREADS = 2


class PeerMissing(RuntimeError):
    """The peer interpreter is not set or does not exist (the message says how to make one)."""


def peer_python() -> str | None:
    """The peer's interpreter, from ``BENCH_PEER_PYTHON`` (None when unset)."""
    return os.environ.get(PEER_ENV) or None


def peer_available() -> bool:
    path = peer_python()
    return bool(path) and os.path.isfile(path) and os.access(path, os.X_OK)


def peer_env_command(venv: str = "DIR") -> str:
    """The shell command that makes a peer environment in ``venv`` (pinned torch + diffusers)."""
    return (f"python -m venv {venv} && {venv}/bin/pip install {' '.join(spec.PEER_REQUIREMENTS)} "
            f"--extra-index-url {spec.PEER_INDEX}")


def require_peer() -> str:
    """The peer's interpreter, or PeerMissing with a one-line message naming the variable."""
    path = peer_python()
    if peer_available():
        return path
    what = (f"{PEER_ENV} is not set" if path is None else
            f"{PEER_ENV}={path} is not an executable file")
    raise PeerMissing(f"{what}: set it to the python of a virtualenv with "
                      f"{' and '.join(spec.PEER_REQUIREMENTS)}, made by `{peer_env_command()}` or by "
                      f"`python -m bench.run --make-peer-env DIR`; or pass --no-peer (diffjax only)")


def make_peer_env(venv: str, run=subprocess.run) -> str:
    """Create the peer virtualenv ``venv`` (venv + pip, pinned ``spec.PEER_REQUIREMENTS``) and
    return its interpreter, after checking that it imports torch and diffusers."""
    venv = os.path.abspath(venv)
    python = os.path.join(venv, "bin", "python")
    steps = [[sys.executable, "-m", "venv", venv],
             [python, "-m", "pip", "install", *spec.PEER_REQUIREMENTS, "--extra-index-url",
              spec.PEER_INDEX],
             [python, "-c", "import torch, diffusers; print('torch', torch.__version__, "
                            "'diffusers', diffusers.__version__)"]]
    for argv in steps:
        if run(argv).returncode:
            raise RuntimeError(f"making the peer environment failed at: {' '.join(argv)}")
    return python


def load() -> float:
    return os.getloadavg()[0]


MALLOCS = runtime.ALLOCATORS   # auto, jemalloc, hugetlb, default
MALLOC = "auto"   # set by bench.run --malloc; the same for both workers
_MALLOC_KEYS = ("GLIBC_TUNABLES", "DIFFJAX_MALLOC_TUNING", "DIFFJAX_MALLOC", "MALLOC_CONF")


def malloc_env(env: dict, malloc: str) -> dict:
    """``env`` with the allocator setting ``malloc`` (diffjax.runtime; what the ``diffjax`` command
    runs with is 'auto'), for both workers alike: 'jemalloc' preloads jemalloc with its huge-page,
    keep-freed-pages configuration, 'hugetlb' adds glibc.malloc.hugetlb=1, 'default' is glibc's
    malloc untouched, 'auto' the first of jemalloc/hugetlb that applies here."""
    if malloc not in MALLOCS:
        raise ValueError(f"malloc {malloc!r} is not one of {MALLOCS}")
    env = {k: v for k, v in env.items() if k not in _MALLOC_KEYS}
    kept = " ".join(p for p in env.pop("LD_PRELOAD", "").split() if "jemalloc" not in p)
    if kept:
        env["LD_PRELOAD"] = kept
    return runtime.cpu_malloc_env({**env, "DIFFJAX_MALLOC": malloc}) or env


def malloc_used(env: dict) -> str:
    """Which allocator setting ``env`` carries: 'jemalloc', 'hugetlb' or 'default'."""
    if "jemalloc" in env.get("LD_PRELOAD", ""):
        return "jemalloc"
    return "hugetlb" if runtime.HUGETLB in env.get("GLIBC_TUNABLES", "") else "default"


def compact_memory() -> bool:
    """Ask the kernel to defragment free memory (root only; best effort), so that both workers of
    the next pair find huge pages: run-to-run noise otherwise reached +-30% in the train step."""
    try:
        os.sync()
        with open("/proc/sys/vm/compact_memory", "w") as f:
            f.write("1")
        return True
    except OSError:
        return False


def worker_env(threads: int = THREADS) -> dict:
    """Environment for both workers: same thread count, CPU-only JAX, repo root importable, the
    same malloc tunables (``MALLOC``)."""
    env = malloc_env(dict(os.environ), MALLOC)
    env.update(JAX_PLATFORMS="cpu", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               BENCH_THREADS=str(threads), PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="3")
    return env


def machine() -> dict:
    info = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "load_1min": round(load(), 2), "malloc": malloc_used(worker_env()),
            "thp": runtime.thp_mode(), "glibc_tunables": worker_env().get("GLIBC_TUNABLES", ""),
            "ld_preload": worker_env().get("LD_PRELOAD", ""),
            "malloc_conf": worker_env().get("MALLOC_CONF", "")}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        for row in text.splitlines():
            if row.startswith("model name"):
                info["cpu"] = row.split(":", 1)[1].strip()
            if row.startswith("flags"):
                flags = set(row.split(":", 1)[1].split())
                info["isa"] = sorted(f for f in flags if f.startswith(("avx", "fma", "amx")))
                break
        with open("/proc/meminfo") as f:
            info["mem_gib"] = round(int(f.readline().split()[1]) / 2 ** 20, 1)
    except OSError:
        pass
    return info


def print_json(record: dict) -> None:
    print(json.dumps(record, sort_keys=True), flush=True)


class Worker:
    """One benchmark worker process speaking the ``worker_io`` protocol."""

    def __init__(self, name: str, argv: list, timeout: float = 3600.0, env=None):
        self.name, self.timeout = name, timeout
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                     env=env or worker_env())
        self.ready = self._read()

    def _read(self) -> dict:
        for line in self.proc.stdout:
            rec = worker_io.parse(line)
            if rec is not None:
                if rec.get("event") == "error":
                    raise RuntimeError(f"{self.name}: {rec.get('message')}")
                return rec
        err = self.proc.stderr.read()[-3000:]
        raise RuntimeError(f"{self.name} worker exited (code {self.proc.wait()}):\n{err}")

    def run(self, n: int) -> dict:
        self.proc.stdin.write(f"run {n}\n")
        self.proc.stdin.flush()
        return self._read()

    def quit(self) -> dict:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            rec = self._read()
        finally:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
            self.proc.stderr.close()
            self.proc.stdout.close()
        return rec

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def diffjax_argv(workload: str, dtype: str, extra=()) -> list:
    return [sys.executable, "-m", "bench.diffjax_side", "--workload", workload, "--dtype", dtype,
            *extra]


def peer_argv(workload: str, dtype: str, extra=()) -> list:
    return [peer_python(), os.path.join(ROOT, "bench", "peer_diffusers.py"), "--workload", workload,
            "--dtype", dtype, *extra]


def peer_oneshot(args: list, timeout: float = 600.0):
    """Run the peer script once with ``args`` and return its record (None if no peer venv)."""
    if not peer_available():
        return None
    out = subprocess.run([peer_python(), os.path.join(ROOT, "bench", "peer_diffusers.py"), *args],
                         capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=worker_env())
    for line in out.stdout.splitlines():
        rec = worker_io.parse(line)
        if rec is not None:
            return rec
    raise RuntimeError(f"peer {args} failed (code {out.returncode}):\n{out.stderr[-3000:]}")


def ab(workload: str, dtype: str, reps: int = 5, iters: int = 1, peer: bool = True,
       sample_steps: int = 0, warm: bool = True, log=print) -> dict:
    """Alternate diffjax (A) and the peer (B) on one workload; medians of images/s and of A/B.

    ``sample_steps`` = K > 0 times K steps of each sampler on both sides (images/s extrapolated);
    ``warm`` = False skips the untimed second call (for very slow configurations). ``peer`` needs
    ``BENCH_PEER_PYTHON`` (``PeerMissing`` otherwise).
    """
    if peer:
        require_peer()
    extra = []
    if sample_steps and workload != "train":
        extra += ["--sample-steps", str(sample_steps)]
    if not warm:
        extra.append("--no-warm")
    sides = [("diffjax", diffjax_argv(workload, dtype, extra))]
    if peer:
        sides.append(("diffusers", peer_argv(workload, dtype, extra)))
    workers = {}
    compact_memory()
    try:
        for name, argv in sides:
            log(f"  [{workload}/{dtype}] starting {name} (load {load():.2f})")
            workers[name] = Worker(name, argv)
            log(f"  [{workload}/{dtype}] {name} ready: first call {workers[name].ready['first_call_s']:.1f} s")
        ips = {name: [] for name in workers}
        usage = {name: [] for name in workers}
        loads = []
        for r in range(reps):
            for name, w in workers.items():
                rec = w.run(iters)
                ips[name].append(rec["images"] / rec["seconds"])
                usage[name].append({k: rec.get(k) for k in ("minor_faults", "sys_s", "user_s")})
            loads.append(load())
            log(f"  [{workload}/{dtype}] rep {r + 1}/{reps}: " +
                "  ".join(f"{n} {v[-1]:.2f} img/s" for n, v in ips.items()) + f"  (load {loads[-1]:.2f})")
        mem = {name: w.quit() for name, w in workers.items()}
    finally:
        for w in workers.values():
            w.kill()
    out = {"workload": workload, "dtype": dtype, "reps": reps, "iters": iters,
           "sample_steps": sample_steps if workload != "train" else 0, "warm": warm,
           "load_median": statistics.median(loads)}
    for name, w in workers.items():
        rdy = w.ready
        out[name] = {"images_per_s": statistics.median(ips[name]), "images_per_s_all": ips[name],
                     "usage_per_run": usage[name],
                     "first_call_s": rdy["first_call_s"], "compile_s": rdy.get("compile_s", 0.0),
                     "peak_rss_mb": mem[name]["peak_rss_mb"],
                     "run_peak_rss_mb": mem[name]["run_peak_rss_mb"],
                     "base_rss_mb": rdy.get("import_rss_mb"),
                     **{k: rdy[k] for k in ("flops_per_image", "xla_temp_mb", "xla_flags", "versions")
                        if k in rdy}}
    if "diffusers" in workers:
        ratios = [a / b for a, b in zip(ips["diffjax"], ips["diffusers"])]
        out["ratio"] = statistics.median(ratios)
        out["ratios"] = ratios
    return out


TARGETS = {"train": 1.2, "ddim50": 1.3, "ddim50_cfg": 1.3, "dpmpp20": 1.3}


def utilization(result: dict, side: str, peak_gflops: float) -> float:
    """Model FLOP/s of ``side`` as a fraction of the float32 matmul peak."""
    flops = result["diffjax"].get("flops_per_image")
    if not flops or not peak_gflops or side not in result:
        return float("nan")
    return result[side]["images_per_s"] * flops / 1e9 / peak_gflops


def table(results: list, peak_gflops: float) -> str:
    """A short text table of ``ab`` results (one row per workload and dtype)."""
    head = (f"{'workload':11s} {'dtype':8s} {'diffjax':>8s} {'peer':>8s} {'ratio':>6s} {'target':>6s} "
            f"{'1st(dj)':>8s} {'compile':>7s} {'1st(pe)':>7s} {'RSS dj':>7s} {'RSS pe':>7s} "
            f"{'GF/img':>7s} {'util dj':>7s} {'util pe':>7s}")
    lines = [head, "-" * len(head)]
    nan = float("nan")
    for r in results:
        dj, pe = r["diffjax"], r.get("diffusers", {})
        name = r["workload"] + ("~" if r.get("sample_steps") else "")
        lines.append(
            f"{name:11s} {r['dtype']:8s} {dj['images_per_s']:8.2f} "
            f"{pe.get('images_per_s', nan):8.2f} {r.get('ratio', nan):6.2f} "
            f"{TARGETS.get(r['workload'], nan) if r['dtype'] == 'float32' else nan:6.1f} "
            f"{dj['first_call_s']:8.1f} {dj['compile_s']:7.1f} {pe.get('first_call_s', nan):7.1f} "
            f"{dj['peak_rss_mb']:7.0f} {pe.get('peak_rss_mb', nan):7.0f} "
            f"{dj.get('flops_per_image', nan) / 1e9:7.1f} "
            f"{100 * utilization(r, 'diffjax', peak_gflops):6.1f}% "
            f"{100 * utilization(r, 'diffusers', peak_gflops):6.1f}%")
    lines.append("images/s (medians over A/B/A/B repetitions); ratio = median of per-repetition "
                 "diffjax/peer; 1st = time to first result (s, compile included); RSS = peak resident MB; "
                 f"util = model FLOP/s / float32 XLA matmul peak ({peak_gflops:.0f} GFLOP/s); ~ = sampler timed "
                 "over its first K steps on both sides, images/s extrapolated to the full run")
    return "\n".join(lines)


def summary(results: list, peak: dict) -> dict:
    """The one-line record BENCHMARKS.md keeps: train_ratio, sample_ratio (min over samplers), ..."""
    by = {(r["workload"], r["dtype"]): r for r in results}
    out = {"peak_float32_gflops": round(peak.get("xla_float32_gflops", float("nan")), 1),
           "load_1min": round(load(), 2),
           "malloc": malloc_used(worker_env())}
    for dtype, suffix in (("float32", ""), ("bfloat16", "_bf16")):
        ratios = {w: by[(w, dtype)]["ratio"] for w in TARGETS if (w, dtype) in by and "ratio" in by[(w, dtype)]}
        if "train" in ratios:
            out["train_ratio" + suffix] = round(ratios["train"], 3)
        samp = [v for k, v in ratios.items() if k != "train"]
        if samp:
            out["sample_ratio" + suffix] = round(min(samp), 3)
        for w, v in ratios.items():
            out[f"ratio_{w}{suffix}"] = round(v, 3)
        for (w, dt), r in by.items():
            if dt == dtype:
                out[f"images_per_s_{w}{suffix}"] = round(r["diffjax"]["images_per_s"], 3)
                if "diffusers" in r:
                    out[f"peer_images_per_s_{w}{suffix}"] = round(r["diffusers"]["images_per_s"], 3)
    f32 = [r for r in results if r["dtype"] == "float32" and r["workload"] != "train"]
    if f32:
        out["forward_util"] = round(max(utilization(r, "diffjax", out["peak_float32_gflops"]) for r in f32), 3)
    if ("train", "float32") in by:
        out["compile_train_s"] = round(by[("train", "float32")]["diffjax"]["compile_s"], 1)
    return out


def peak_record(peer: bool = True) -> dict:
    """Matmul peaks measured in a fresh diffjax-side process (``bench.peak``) and the peer."""
    out = subprocess.run([sys.executable, "-m", "bench.peak", "--reps", "7"] + ([] if peer else ["--no-peer"]),
                         capture_output=True, text=True, cwd=ROOT, env=worker_env(), timeout=1800)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"bench.peak failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])
