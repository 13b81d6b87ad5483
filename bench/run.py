"""Every benchmark side by side: training and the three samplers, float32 and bfloat16, diffjax vs the
peer (PyTorch + diffusers), alternated A/B/A/B; prints the table and one JSON summary line.

    python -m bench.run [--workloads train,ddim50,ddim50_cfg,dpmpp20] [--dtypes float32,bfloat16]
                        [--reps 5] [--iters 1] [--sample-steps K] [--no-peer] [--out FILE.json]
    python -m bench.run --make-peer-env DIR      # the peer's virtualenv (pinned torch + diffusers)

The peer runs under the interpreter BENCH_PEER_PYTHON names (e.g. DIR/bin/python); without it the
run stops with a one-line error unless --no-peer is given.

Measure when the machine is quiet (``uptime``): other processes on this 2-core machine slow both
sides, the peer's OpenMP threads more than XLA's. The summary line is what BENCHMARKS.md records.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import harness, spec  # noqa: E402


def parse_args(argv, workloads=spec.WORKLOADS, doc=__doc__):
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--workloads", default=",".join(workloads))
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--reps", type=int, default=5, help="A/B repetitions (median reported)")
    p.add_argument("--iters", type=int, default=1, help="calls per timed run (train steps / sample runs)")
    p.add_argument("--no-peer", action="store_true", help="diffjax only")
    p.add_argument("--sample-steps", type=int, default=0,
                   help="time K steps of each sampler on both sides, images/s extrapolated to the full "
                        "run (every step is one network call); 0 = full runs")
    p.add_argument("--no-warm", action="store_true", help="skip the untimed warm-up calls per side")
    p.add_argument("--train-reps", type=int, default=0, help="repetitions for training (default --reps)")
    p.add_argument("--bf16-reps", type=int, default=0, help="repetitions for bfloat16 (default --reps)")
    p.add_argument("--bf16-sample-steps", type=int, default=0,
                   help="--sample-steps for bfloat16 (default: --sample-steps)")
    p.add_argument("--malloc", choices=harness.MALLOCS, default="auto",
                   help="allocator for both workers (diffjax.runtime): 'jemalloc' (preloaded, huge "
                        "pages, freed pages kept), 'hugetlb' (glibc.malloc.hugetlb=1), 'default' "
                        "(glibc untouched), 'auto' (what the diffjax command uses: the first of "
                        "jemalloc/hugetlb that applies)")
    p.add_argument("--out", default="", help="also write all records as JSON here")
    p.add_argument("--make-peer-env", metavar="DIR", default="",
                   help="create the peer's virtualenv in DIR (venv + pip: "
                        f"{' '.join(spec.PEER_REQUIREMENTS)}) and exit; then run with "
                        f"{harness.PEER_ENV}=DIR/bin/python")
    return p.parse_args(argv)


def main(argv=None, workloads=spec.WORKLOADS, doc=__doc__):
    a = parse_args(argv, workloads, doc)
    if a.make_peer_env:
        try:
            python = harness.make_peer_env(a.make_peer_env)
        except (OSError, RuntimeError) as e:
            sys.exit(f"bench.run: error: {e}")
        print(f"peer environment ready: export {harness.PEER_ENV}={python}")
        return None
    if not a.no_peer:
        try:
            harness.require_peer()
        except harness.PeerMissing as e:
            sys.exit(f"bench.run: error: {e}")
    harness.MALLOC = a.malloc
    try:
        harness.worker_env()   # the allocator asked for must exist here (e.g. jemalloc installed)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"bench.run: error: --malloc {a.malloc}: {e}")
    log = lambda s: print(s, file=sys.stderr, flush=True)
    log(f"machine: {harness.machine()}")
    peak = harness.peak_record(peer=not a.no_peer)
    log(f"matmul peak: {peak}")
    results = []
    for dtype in a.dtypes.split(","):
        bf16 = dtype == "bfloat16"
        reps = a.bf16_reps if bf16 and a.bf16_reps else a.reps
        steps = a.bf16_sample_steps if bf16 and a.bf16_sample_steps else a.sample_steps
        for w in a.workloads.split(","):
            r = a.train_reps if w == "train" and a.train_reps and not bf16 else reps
            results.append(harness.ab(w, dtype, r, a.iters, peer=not a.no_peer, sample_steps=steps,
                                      warm=not a.no_warm, log=log))
    peak_after = harness.peak_record(peer=False)
    peak["xla_float32_gflops"] = max(peak["xla_float32_gflops"], peak_after["xla_float32_gflops"])
    print(harness.table(results, peak["xla_float32_gflops"]))
    summ = harness.summary(results, peak)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump({"summary": summ, "peak": peak, "machine": harness.machine(), "results": results},
                      f, indent=1)
    harness.print_json(summ)
    return summ


if __name__ == "__main__":
    main()
