"""The train loop: everything is built from the config, then one readable loop.

    summary = train(config, workdir)

Phases: validate the config -> lock the workdir -> setup (mesh, data, model, step, checkpoints)
-> resume (config compared with the saved one) or init (from ``config.init_from``'s weights when it
names a run: fine-tuning, init_from.py) -> loop -> final save, samples and
evaluation. Inside the loop each micro-step
    1. reads a batch (each process its own shard) and assembles the global array,
    2. runs the jitted step (step.py),
    3. checks the *previous* step's loss, gradient norm and parameter norm (so the host never
       waits on the step it just launched): a NaN/Inf stops the run naming the step and the last
       good checkpoint, and a state is saved only after its own metrics were checked, so no
       non-finite state is ever written and the good checkpoints are never rotated out by one,
    4. raises a background checkpoint write's failure (e.g. a full disk) at the next step,
    5. logs, saves (async), draws sample grids and evaluates on their cadences,
    6. polls the SIGTERM / Ctrl-C flag: on preemption it saves synchronously and returns cleanly
       (``summary['preempted']``; the CLI exits with ``preemption.EXIT_PREEMPTED``).
A rerun with the same workdir resumes from the latest checkpoint (state + data position), and its
losses equal those of an uninterrupted run; metric rows past the restored step are dropped first,
so every step has one row. Only one ``train`` runs in a workdir at a time (``workdir.lock``).
Cadences are in optimizer steps; with gradient accumulation checkpoints are named by micro-step
(= state.step).
"""
from __future__ import annotations

import logging
import os
import time
from typing import Callable, Sequence

import jax
import numpy as np

from diffjax.core import samplers
from diffjax.data import pipeline
from diffjax.models import registry as model_registry
from diffjax import guidance, inference
from diffjax.training import checkpoint, evaluation, init_from, metrics, preemption, sharding
from diffjax.training import progress as progress_lib
from diffjax.training import step as step_lib
from diffjax.training import validation
from diffjax.training import workdir as workdir_lib


class NonFiniteLossError(RuntimeError):
    """The loss, the gradient norm or the parameter norm became NaN or Inf."""


def validate_config(config):
    """Errors that name the offending key, for values a type check cannot catch."""
    validation.check(config)
    for key in ("sample.sampler", "eval.sampler"):
        section, name = key.split(".")
        value = config[section][name]
        if value not in samplers.SAMPLERS:
            raise ValueError(f"config.{key}: unknown sampler {value!r}; expected one of "
                             f"{sorted(samplers.SAMPLERS)}")


def non_finite(values: dict) -> list[tuple[str, float]]:
    """The (name, value) pairs among loss, gradient norm and parameter norm that are NaN or Inf."""
    names = (("loss", "loss"), ("grad_norm", "gradient norm"), ("param_norm", "parameter norm"))
    return [(label, float(values[k])) for k, label in names if not np.isfinite(values[k])]


def _every(n: int, step: int, last: bool) -> bool:
    return last or (n > 0 and step % n == 0)


def train(config, workdir: str, *, callbacks: Sequence[Callable] = (),
          show_progress: bool = True) -> dict:
    """Train (or resume) the run described by ``config`` in ``workdir``; returns a summary dict.

    ``callbacks`` are called as ``cb(step, state, metrics)`` after every optimizer step (tests use
    them to send signals or inspect state). ``show_progress`` draws the progress bar on stderr
    (process 0 only).
    """
    t_start = time.time()
    validate_config(config)
    os.makedirs(workdir, exist_ok=True)
    with workdir_lib.lock(workdir, enabled=jax.process_index() == 0):
        bar = progress_lib.Progress(config.total_steps,
                                    enabled=show_progress and jax.process_index() == 0)
        try:
            return _train(config, workdir, callbacks, bar, t_start)
        finally:
            bar.close()


def _train(config, workdir, callbacks, bar, t_start) -> dict:
    # ---- setup ---------------------------------------------------------------------------------
    from diffjax import latent

    # pixel data, or with config.latent.vae the latent cache `diffjax encode` wrote (checked
    # against the VAE and the data section); latents are never flipped (the cache holds the
    # flipped images' latents instead)
    source, flip = latent.training_source(config, workdir)
    example_shape = tuple(np.shape(source[0]["x"]))
    model = model_registry.build_model(config.model)
    mesh = step_lib.make_mesh(config, model, example_shape)
    vae = inference.run_vae(config, workdir, mesh, example_shape)   # decodes grids; None: pixels
    ts = step_lib.make_train_step(config, model, mesh, example_shape=example_shape)
    classes = step_lib.num_classes(model)
    if classes and source.num_classes > classes:
        raise ValueError(f"config.model.num_classes = {classes} but data source "
                         f"{config.data.name!r} has {source.num_classes} classes")
    data_iter = pipeline.make_iterator(source, ts.micro_batch, seed=config.seed, flip=flip)
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                   max_to_keep=config.checkpoint.keep,
                                   async_save=config.checkpoint.async_save)
    accum = ts.batch.accum_steps
    total_micro = int(config.total_steps) * accum

    # ---- resume or init ------------------------------------------------------------------------
    first = jax.process_index() == 0
    try:
        latest = ckpt.latest_step()
        if latest is not None:
            changes = workdir_lib.check_resume_config(workdir, config) if first else {}
            state = ckpt.restore(ts.abstract_state, data_iter)
            logging.info("resumed from %s", ckpt.path(latest))
            if changes:
                workdir_lib.record_changes(workdir, changes, latest // accum)
                inference.save_run_info(workdir, config, example_shape, classes)
        else:
            state = ts.init_state(jax.random.key(config.seed))
            state, started = init_from.apply(ts, state, config, model, example_shape)
            if started:
                logging.info("params start from %s (set %s, step %d)", started["workdir"],
                             started["params"], started["step"])
            if first:
                inference.save_run_info(workdir, config, example_shape, classes)
    except BaseException:
        ckpt.close()
        raise
    start = int(jax.device_get(state.step))
    dropped = metrics.truncate_after(workdir, start // accum)   # one row per step after a resume
    if dropped:
        logging.info("dropped %d metric rows/events past the restored step %d", dropped,
                     start // accum)
    writer = metrics.make_writer(workdir)
    if latest is None:
        writer.write_hparams(_flat(config))
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(ts.abstract_state.params))
    logging.info("model %s: %.2fM params; mesh %s; micro-batch %d x %d accumulation; steps %d -> %d",
                 config.model.name, n_params / 1e6, dict(mesh.shape), ts.micro_batch, accum,
                 start // accum, config.total_steps)
    train_step = ts.jit_step()
    bar.begin(start // accum)
    summary = {"start_step": start // accum, "params": n_params, "preempted": False}
    losses, pending, last_saved = [], None, start
    t_loop, t_rate, step_rate = time.time(), time.time(), start // accum

    def check(entry):
        step_no, m = entry
        values = jax.device_get({k: m[k] for k in ("loss", "grad_norm", "param_norm")})
        bad = non_finite(values)
        if bad:
            ckpt.wait()
            last = ckpt.latest_step()
            where = ckpt.path(last) if last is not None else "none (no checkpoint was saved)"
            what = ", ".join(f"{n} is {v}" for n, v in bad)
            raise NonFiniteLossError(f"{what} at step {step_no // accum}; stopping (nothing of this "
                                     f"state was saved). Last good checkpoint: {where}; lower "
                                     f"config.optim.lr or set config.optim.grad_clip")
        losses.append(float(values["loss"]))
        return m

    # ---- loop ----------------------------------------------------------------------------------
    try:
        with preemption.PreemptionGuard() as guard:
            for micro in range(start, total_micro):
                batch = sharding.to_global(next(data_iter), ts.batch_sharding)
                if micro == start:
                    bar.phase("compiling the train step")
                state, m = train_step(state, batch)
                if pending is not None:
                    check(pending)
                ckpt.check()                        # a failed background save stops the run here
                pending = (micro + 1, m)
                if (micro + 1) % accum:
                    if guard.requested():
                        break
                    continue
                step = (micro + 1) // accum
                last = micro + 1 == total_micro
                bar.update(step, **({'loss': losses[-1]} if losses else {}))
                if _every(config.log_every, step, last):
                    m = check(pending)
                    pending = None
                    scalars = {k: float(v) for k, v in jax.device_get(m).items() if k != "loss"}
                    scalars["loss"] = float(np.mean(losses))
                    now = time.time()
                    if step > step_rate:
                        scalars["steps_per_second"] = (step - step_rate) / max(now - t_rate, 1e-9)
                    t_rate, step_rate = now, step
                    writer.write_scalars(step, scalars)
                    writer.flush()
                    summary["loss"], losses = scalars["loss"], []
                if _every(config.checkpoint.every, step, last):
                    if pending is not None:
                        check(pending)
                        pending = None
                    ckpt.save(micro + 1, state, data_iter, force=True)
                    last_saved = micro + 1
                for cb in callbacks:
                    cb(step, state, m)
                if _every(config.sample.every, step, False):
                    _write_samples(ts, state, config, workdir, writer, step, classes, example_shape,
                                   bar, vae)
                if config.eval.every and step % config.eval.every == 0 and not last:
                    writer.write_scalars(step, _evaluate(ts, state, config, workdir, step, classes,
                                                         example_shape, bar, vae))
                if guard.requested():
                    break
            if pending is not None:
                check(pending)
            stopped_at = int(jax.device_get(state.step))
            if stopped_at < total_micro:  # preempted: save where we are and exit cleanly
                if last_saved != stopped_at:
                    ckpt.save(stopped_at, state, data_iter, force=True)
                ckpt.wait()
                bar.close()
                logging.info("preempted at step %d: checkpoint %s saved; rerun the same command to "
                                "resume", stopped_at // accum, ckpt.path(stopped_at))
                writer.flush()
                summary.update(preempted=True, step=stopped_at // accum,
                               checkpoint=ckpt.path(stopped_at))
                return summary
    finally:
        ckpt.close()  # waits for pending async saves, also when an error stops the run
    bar.close()

    # ---- final samples and evaluation ----------------------------------------------------------
    step = total_micro // accum
    t_train = time.time() - t_loop
    summary.update(step=step, train_seconds=t_train, checkpoint=ckpt.path(total_micro),
                   steps_per_second=(step - start // accum) / max(t_train, 1e-9))
    if config.sample.num > 0:
        summary["samples"] = _write_samples(ts, state, config, workdir, writer, step, classes,
                                            example_shape, bar, vae)
    if config.eval.at_end:
        ev = _evaluate(ts, state, config, workdir, step, classes, example_shape, bar, vae)
        writer.write_scalars(step, ev)
        summary.update(ev)
    bar.close()
    writer.flush()
    summary["wall_seconds"] = time.time() - t_start
    logging.info("done: %s", {k: (round(v, 4) if isinstance(v, float) else v)
                              for k, v in summary.items()})
    return summary


def _write_samples(ts, state, config, workdir, writer, step, classes, example_shape, bar,
                   vae=None) -> str:
    run = inference.from_state(ts, state, config, classes, example_shape, vae)
    s = config.sample
    bar.phase(f"step {step}: sample grid ({s.num} samples, {s.sampler}, {s.steps} steps, "
              f"guidance {guidance.describe(guidance.resolve(s.guidance))})")
    x = inference.generate(run, s.num, sampler=s.sampler, steps=s.steps, guidance=s.guidance,
                           seed=config.seed)
    pic = metrics.to_picture(x, ncol=classes if classes and s.num % classes == 0 else None)
    path = os.path.join(workdir, "samples", f"step_{step:07d}.png")
    if jax.process_index() == 0:
        metrics.save_png(pic, path, upscale=2)
    writer.write_images(step, {"samples": pic[None]})
    bar.end_phase()
    logging.info("step %d: samples written to %s", step, path)
    return path


def _evaluate(ts, state, config, workdir, step, classes, example_shape, bar, vae=None) -> dict:
    run = inference.from_state(ts, state, config, classes, example_shape, vae)
    e = config.eval
    bar.phase(f"step {step}: evaluation ({e.num_samples} samples, {e.sampler}, {e.steps} steps, "
              f"guidance {guidance.describe(guidance.resolve(e.guidance))})")
    out = evaluation.evaluate(run, workdir)
    bar.end_phase()
    logging.info("step %d: %s", step, {k: round(v, 4) for k, v in out.items()})
    return out


def _flat(config, prefix="") -> dict:
    out = {}
    for k, v in config.items():
        if hasattr(v, "items"):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out
