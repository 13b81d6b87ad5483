"""The peer side: the matched workloads in PyTorch + diffusers (run with the peer's own interpreter).

    $BENCH_PEER_PYTHON bench/peer_diffusers.py --workload train --dtype float32   (a worker)
    $BENCH_PEER_PYTHON bench/peer_diffusers.py --count-params
    $BENCH_PEER_PYTHON bench/peer_diffusers.py --peak

BENCH_PEER_PYTHON is the python of a virtualenv with spec.PEER_REQUIREMENTS (pinned torch and
diffusers; ``python -m bench.run --make-peer-env DIR`` makes one).

Never imported by diffjax: ``bench.harness`` starts it as a subprocess. The model is
``UNet2DModel(**spec.DIFFUSERS_UNET)``; training is one AdamW step on the eps-MSE of DDPMScheduler's
forward process (batch 32); sampling follows diffusers' pipelines (DDIMScheduler eta = 0 with
clip_sample off, DPMSolverMultistepScheduler 'dpmsolver++' order 2; classifier-free guidance batches
the conditional and null-class halves into one 2B call). bfloat16 means ``torch.autocast('cpu',
bfloat16)`` around the network with float32 parameters and optimizer, as diffjax's dtype='bfloat16'.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import spec, worker_io  # noqa: E402  (pure Python)

THREADS = int(os.environ.get("BENCH_THREADS", "2"))


def _torch():
    import torch
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    return torch


def build_model(torch):
    from diffusers import UNet2DModel
    return UNet2DModel(**spec.DIFFUSERS_UNET)


def make_train(torch, dtype: str):
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    model = build_model(torch).train()
    opt = torch.optim.AdamW(model.parameters(), lr=spec.LR, weight_decay=0.0)
    sched = DDPMScheduler(num_train_timesteps=spec.NUM_TRAIN_TIMESTEPS)
    g = torch.Generator().manual_seed(0)
    b = spec.TRAIN_BATCH
    h, w, c = spec.IMAGE
    x0 = torch.randn(b, c, h, w, generator=g).clamp(-1, 1)
    y = torch.randint(0, spec.NUM_CLASSES, (b,), generator=g)
    bf16 = dtype == "bfloat16"

    def step():
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, spec.NUM_TRAIN_TIMESTEPS, (b,), generator=g)
        xt = sched.add_noise(x0, noise, t)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            pred = model(xt, t, class_labels=y).sample
        loss = F.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    def run(n):
        for _ in range(n):
            loss = step()
        float(loss)

    return step, run, b


def make_sampler(torch, name: str, dtype: str, max_steps: int = 0):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
    kind, steps, cfg = spec.SAMPLERS[name]
    run_steps = min(max_steps, steps) if max_steps > 0 else steps
    model = build_model(torch).eval()
    if kind == "ddim":
        sched = DDIMScheduler(num_train_timesteps=spec.NUM_TRAIN_TIMESTEPS, clip_sample=False)
        extra = {"eta": 0.0}
    else:
        sched = DPMSolverMultistepScheduler(num_train_timesteps=spec.NUM_TRAIN_TIMESTEPS,
                                            algorithm_type="dpmsolver++", solver_order=2)
        extra = {}
    b = spec.SAMPLE_BATCH
    h, w, c = spec.IMAGE
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, spec.NUM_CLASSES, (b,), generator=g)
    null = torch.full_like(y, spec.NUM_CLASSES)
    bf16 = dtype == "bfloat16"

    @torch.inference_mode()
    def sample():
        sched.set_timesteps(steps)
        x = torch.randn(b, c, h, w, generator=g)
        for t in sched.timesteps[:run_steps]:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                if cfg:
                    eps = model(torch.cat([x, x]), t, class_labels=torch.cat([y, null])).sample
                    e_c, e_u = eps.float().chunk(2)
                    eps = e_u + spec.GUIDANCE_SCALE * (e_c - e_u)
                else:
                    eps = model(x, t, class_labels=y).sample.float()
            x = sched.step(eps, t, x, **extra).prev_sample
        return x

    def run(n):
        for _ in range(n):
            x = sample()
        float(x[0, 0, 0, 0])

    return sample, run, b * run_steps / steps


def matmul_peak(torch, n: int = 2048, reps: int = 5) -> dict:
    """Median GFLOP/s of an n^3 matmul per dtype; a dtype too slow for n (a software bfloat16 path
    on a CPU without bf16 instructions) is measured at 512 instead (reported in ``sizes``)."""
    out, sizes = {}, {}
    for name, dt in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        size = 512
        a = torch.randn(size, size).to(dt)
        t0 = time.perf_counter()
        a @ a
        if (time.perf_counter() - t0) * (n / size) ** 3 < 5.0:
            size = n
        a = torch.randn(size, size).to(dt)
        bm = torch.randn(size, size).to(dt)
        a @ bm
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            a @ bm
            ts.append(time.perf_counter() - t0)
        ts.sort()
        out[name], sizes[name] = 2 * size ** 3 / ts[len(ts) // 2] / 1e9, size
    return dict(out, sizes=sizes)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workload", choices=spec.WORKLOADS)
    p.add_argument("--dtype", choices=spec.DTYPES, default="float32")
    p.add_argument("--count-params", action="store_true")
    p.add_argument("--peak", action="store_true", help="torch matmul GFLOP/s (2048^3)")
    p.add_argument("--sample-steps", type=int, default=0,
                   help="time only the first K sampler steps (images/s extrapolated to the full run)")
    p.add_argument("--no-warm", action="store_true", help="skip the untimed second call")
    a = p.parse_args(argv)
    torch = _torch()
    import diffusers
    import_rss = worker_io.rss_mb()
    versions = {"torch": torch.__version__, "diffusers": diffusers.__version__,
                "threads": torch.get_num_threads(),
                "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    if a.count_params:
        model = build_model(torch)
        worker_io.emit(dict(versions, params=sum(q.numel() for q in model.parameters())))
        return
    if a.peak:
        worker_io.emit(dict(versions, matmul_gflops=matmul_peak(torch)))
        return
    if a.workload is None:
        p.error("pass --workload, --count-params or --peak")
    t0 = time.perf_counter()
    if a.workload == "train":
        first, run, per_call = make_train(torch, a.dtype)
    else:
        first, run, per_call = make_sampler(torch, a.workload, a.dtype, a.sample_steps)
    info = dict(versions, side="diffusers", workload=a.workload, dtype=a.dtype,
                build_s=time.perf_counter() - t0, compile_s=0.0, import_rss_mb=import_rss)
    worker_io.serve(first, run, per_call, dict(info, sample_steps=a.sample_steps), warm=not a.no_warm)


if __name__ == "__main__":
    main()
