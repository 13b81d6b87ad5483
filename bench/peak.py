"""This machine's matmul peak: a 2048^3 matmul through XLA (float32, bfloat16), and through torch.

    python -m bench.peak [--n 2048] [--reps 7] [--no-peer]

The float32 XLA figure is the denominator of every utilization in the benchmarks. Prints a short
table and one JSON line.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from bench import harness  # noqa: E402


def xla_matmul_gflops(dtype: str = "float32", n: int = 2048, reps: int = 7) -> float:
    """Median GFLOP/s of an n^3 matmul in ``dtype`` (float32 accumulation for bfloat16 inputs)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    k1, k2 = jax.random.split(jax.random.key(0))
    a = jax.random.normal(k1, (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(k2, (n, n), jnp.float32).astype(dtype)
    f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    f(a, b).block_until_ready()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f(a, b).block_until_ready()
        ts.append(time.perf_counter() - t0)
    return 2 * n ** 3 / float(np.median(ts)) / 1e9


def measure(n: int = 2048, reps: int = 7, peer: bool = True) -> dict:
    out = {"xla_float32_gflops": xla_matmul_gflops("float32", n, reps),
           "xla_bfloat16_gflops": xla_matmul_gflops("bfloat16", n, reps), "n": n}
    if peer:
        rec = harness.peer_oneshot(["--peak"])
        if rec:
            out["torch_float32_gflops"] = rec["matmul_gflops"]["float32"]
            out["torch_bfloat16_gflops"] = rec["matmul_gflops"]["bfloat16"]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--no-peer", action="store_true")
    a = p.parse_args(argv)
    if not a.no_peer:
        try:
            harness.require_peer()
        except harness.PeerMissing as e:
            sys.exit(f"bench.peak: error: {e}")
    res = measure(a.n, a.reps, peer=not a.no_peer)
    rows = [("XLA", "float32", res["xla_float32_gflops"]), ("XLA", "bfloat16", res["xla_bfloat16_gflops"])]
    if "torch_float32_gflops" in res:
        rows += [("torch", "float32", res["torch_float32_gflops"]),
                 ("torch", "bfloat16", res["torch_bfloat16_gflops"])]
    print(f"{'backend':8s} {'dtype':9s} {'GFLOP/s':>9s}   ({a.n}^3 matmul, load {harness.load():.2f})")
    for be, dt, v in rows:
        print(f"{be:8s} {dt:9s} {v:9.1f}")
    harness.print_json(dict(res, machine=harness.machine()))


if __name__ == "__main__":
    main()
