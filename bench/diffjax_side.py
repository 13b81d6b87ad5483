"""The diffjax side of the matched workloads, written against the public API only.

    python -m bench.diffjax_side --workload train|ddim50|ddim50_cfg|dpmpp20 --dtype float32|bfloat16

is a worker for ``bench.harness`` (see bench/worker_io.py). Training: one jitted step of AdamW on
``losses.make_loss(den, vp_discrete, weighting='snr')`` (= the eps-MSE of DDPM, Ho et al. 2020) with
the parameters and optimizer state donated, batch 32. Sampling: the whole loop - prior draw, the
``lax.scan`` over steps, classifier-free guidance - is one jitted call whose guidance scale, eta and
seed are traced arguments, so changing them never recompiles (tests/test_bench_recompile.py).
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from bench import flops as flops_lib  # noqa: E402
from bench import spec, worker_io  # noqa: E402
from diffjax import guidance, inference  # noqa: E402
from diffjax.core import denoisers, losses, processes  # noqa: E402
from diffjax.models import registry  # noqa: E402

SPACING = {"ddim": "leading", "dpmpp_2m": "linspace"}   # diffusers' defaults for the two schedulers


def make_model(dtype: str = "float32", **overrides):
    return registry.build_model(dict(name="unet", **{**spec.UNET, **overrides}, dtype=dtype))


def init_params(model, seed: int = 0):
    h, w, c = spec.IMAGE
    x = jnp.zeros((1, h, w, c))
    return jax.jit(model.init)(jax.random.key(seed), x, jnp.zeros((1,)),
                               labels=jnp.zeros((1,), jnp.int32))["params"]


def make_denoiser(model, max_batch=None):
    process = processes.get("vp_discrete")
    apply_fn = lambda p, *a, **k: model.apply({"params": p}, *a, **k)
    return denoisers.from_network(apply_fn, process, "eps", max_batch=max_batch), process


def train_slices() -> int:
    """spec.TRAIN_SLICES, or BENCH_TRAIN_SLICES from the environment (which the harness passes on to
    its workers, so ``BENCH_TRAIN_SLICES=8 python -m bench.run ...`` compares another count)."""
    raw = os.environ.get("BENCH_TRAIN_SLICES", str(spec.TRAIN_SLICES))
    if not raw.isdigit() or int(raw) < 1 or spec.TRAIN_BATCH % int(raw):
        raise ValueError(f"BENCH_TRAIN_SLICES={raw!r}: give a positive divisor of the train batch "
                         f"{spec.TRAIN_BATCH}")
    return int(raw)


def make_train_step(model, slices: int = spec.TRAIN_SLICES):
    """``step(params, opt_state, batch, key, i) -> (params, opt_state, loss)``, jitted, donating;
    the batch's gradient computed in ``slices`` slices (``losses.value_and_grad_in_slices``)."""
    den, process = make_denoiser(model)
    loss_fn = losses.make_loss(den, process, weighting="snr")
    vg = losses.value_and_grad_in_slices(loss_fn, slices)
    tx = optax.adamw(spec.LR, weight_decay=0.0)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, batch, key, i):
        (loss, _), grads = vg(params, batch, jax.random.fold_in(key, i))
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step, tx


def make_sample_fn(model, name: str, batch: int = spec.SAMPLE_BATCH, steps: int | None = None,
                   max_batch: int | None = spec.MAX_BATCH):
    """Jitted ``fn(params, key, labels, scale, eta) -> x`` for the sampler ``spec.SAMPLERS[name]``:
    the one sampling program of ``diffjax.inference`` (guidance from the registry).

    Only the batch, the image shape and the number of steps are static; ``scale`` (guidance), ``eta``
    (DDIM stochasticity; ignored by DPM-Solver++) and ``key`` (seed) are traced. Each network call
    runs on slices of at most ``max_batch`` images (``denoisers.from_network``; None: whole batch).
    """
    kind, n, cfg = spec.SAMPLERS[name]
    den, process = make_denoiser(model, max_batch)
    g = guidance.resolve(spec.GUIDANCE_SCALE if cfg else None)
    prog = inference.build(den, process, sampler=kind, steps=steps or n, spacing=SPACING[kind],
                           batch=batch, example_shape=spec.IMAGE, guidance=g,
                           null_label=spec.NUM_CLASSES)

    def jitted_args(params, key, labels, scale, eta):
        gvals = {"scale": scale} if cfg else {}
        knobs = {"eta": eta} if kind == "ddim" else {}
        return params, key, labels, jnp.int32(0), gvals, knobs, None, None, None

    jitted = prog.fn
    # Python floats and float32 arrays are different jit signatures (weak types): pin the knobs to
    # float32 arrays so that fn(..., 3.0, 0.0) and fn(..., jnp.float32(5.0), ...) share one executable.
    knobs = lambda a: a[:3] + tuple(jnp.asarray(v, jnp.float32) for v in a[3:])

    def fn(*args):
        return jitted(*jitted_args(*knobs(args)))

    fn.jitted = jitted
    fn.args = lambda *args: jitted_args(*knobs(args))   # (params, key, labels, scale, eta) -> jitted's
    fn.lower = lambda *args: jitted.lower(*fn.args(*args))
    return fn


def forward_flops_per_image(model, params, batch: int = 8) -> int:
    h, w, c = spec.IMAGE
    x = jnp.zeros((batch, h, w, c))
    f = lambda p: model.apply({"params": p}, x, jnp.zeros((batch,)), labels=jnp.zeros((batch,), jnp.int32))
    return flops_lib.count(f, params) // batch


def build(workload: str, dtype: str, sample_steps: int = 0, max_batch: int | None = spec.MAX_BATCH):
    """(first_call, run, images_per_call, info) for one workload.

    ``first_call`` lowers and compiles (recording ``compile_s`` and XLA's temp buffer size in
    ``info``) and runs once, so the harness's ``first_call_s`` is the time to the first result.
    """
    model = make_model(dtype)
    params = init_params(model)
    fwd = forward_flops_per_image(model, params)
    h, w, c = spec.IMAGE
    info = dict(forward_flops_per_image=fwd)
    st = {"i": 0}
    if workload == "train":
        step, tx = make_train_step(model, train_slices())
        rng = np.random.default_rng(0)
        b = spec.TRAIN_BATCH
        batch = {"x": jnp.asarray(np.clip(rng.standard_normal((b, h, w, c)), -1, 1), jnp.float32),
                 "label": jnp.asarray(rng.integers(0, spec.NUM_CLASSES, b), jnp.int32)}
        key = jax.random.key(0)
        st.update(params=params, opt=tx.init(params))
        info["flops_per_image"] = 3 * fwd   # forward + backward (2x forward)

        def call(n):
            for _ in range(n):
                st["params"], st["opt"], loss = st["fn"](st["params"], st["opt"], batch, key,
                                                         jnp.int32(st["i"]))
                st["i"] += 1
            loss.block_until_ready()

        args = lambda: (st["params"], st["opt"], batch, key, jnp.int32(0))
        fn = step
    else:
        kind, steps, cfg = spec.SAMPLERS[workload]
        run_steps = min(sample_steps, steps) if sample_steps > 0 else steps
        b = spec.SAMPLE_BATCH * run_steps / steps   # images per call, extrapolated if cut short
        fn = make_sample_fn(model, workload, spec.SAMPLE_BATCH, run_steps, max_batch)
        info["max_batch"] = max_batch
        labels = jnp.asarray(np.arange(spec.SAMPLE_BATCH) % spec.NUM_CLASSES, jnp.int32)
        scale, eta = jnp.float32(spec.GUIDANCE_SCALE), jnp.float32(0.0)
        info["flops_per_image"] = steps * fwd * (2 if cfg else 1)

        def call(n):
            for _ in range(n):
                x = st["fn"](params, jax.random.key(st["i"]), labels, scale, eta)
                st["i"] += 1
            x.block_until_ready()

        args = lambda: (params, jax.random.key(0), labels, scale, eta)

    def first_call():
        t0 = time.perf_counter()
        compiled = fn.lower(*args()).compile()
        info["compile_s"] = time.perf_counter() - t0
        mem = compiled.memory_analysis()
        if mem is not None:
            info["xla_temp_mb"] = mem.temp_size_in_bytes / 2 ** 20
        st["fn"] = (lambda *a: compiled(*fn.args(*a))) if hasattr(fn, "args") else compiled
        call(1)

    return first_call, call, b, info


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workload", choices=spec.WORKLOADS, required=True)
    p.add_argument("--dtype", choices=spec.DTYPES, default="float32")
    p.add_argument("--sample-steps", type=int, default=0,
                   help="time only K sampler steps (images/s extrapolated to the full run)")
    p.add_argument("--no-warm", action="store_true", help="skip the untimed second call")
    p.add_argument("--max-batch", type=int, default=spec.MAX_BATCH,
                   help="sampling: network calls on slices of at most this many images (0: whole batch)")
    a = p.parse_args(argv)
    base = worker_io.rss_mb()
    first, run, per_call, info = build(a.workload, a.dtype, a.sample_steps, a.max_batch or None)
    info.update(side="diffjax", workload=a.workload, dtype=a.dtype, import_rss_mb=base,
                xla_flags=os.environ.get("XLA_FLAGS", ""),
                versions={"jax": jax.__version__, "devices": str(jax.devices())})
    info["sample_steps"] = a.sample_steps   # (info is filled in further by first_call)
    worker_io.serve(first, run, per_call, info, warm=not a.no_warm)


if __name__ == "__main__":
    main()
