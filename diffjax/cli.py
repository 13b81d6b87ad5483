"""The ``diffjax`` command: train, sample, evaluate.

    diffjax train    --config configs/digits.py --workdir DIR [--config.key=value ...]
    diffjax sample   --workdir DIR --num 100 --sampler heun --steps 18 --guidance 2 --out grid.png
    diffjax evaluate --workdir DIR [--num 500 --sampler heun --steps 18 --guidance 2]
    diffjax preflight --config configs/imagenet256_dit_xl2.py --topology v5p:4x4x4 [--config.x=y]

Configs are Python files with ``get_config()``, locked: an unknown key or a value of the wrong type
is an error naming the key. ``train`` resumes from the latest checkpoint in DIR if there is one.
Several hosts: pass --coordinator_address/--num_processes/--process_id (or --distributed on a
Cloud TPU pod, where jax.distributed.initialize finds them itself); every host runs the same
command.
"""
from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from diffjax import runtime

COMMANDS = ("train", "sample", "evaluate", "preflight")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (train, preflight).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, samples.")
_NUM = flags.DEFINE_integer("num", None, "Number of samples (sample: default config.sample.num; "
                            "evaluate: default config.eval.num_samples).")
_SAMPLER = flags.DEFINE_string("sampler", None, "Sampler name (default from the run's config).")
_STEPS = flags.DEFINE_integer("steps", None, "Number of sampler steps.")
_GUIDANCE = flags.DEFINE_float("guidance", None, "Classifier-free guidance scale (1 = none).")
_OUT = flags.DEFINE_string("out", None, "Output PNG (sample). Default: WORKDIR/sample.png.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_PARAMS = flags.DEFINE_string("params", None, "Parameter set: 'params' or an EMA name such as "
                              "'power_0.1' (default config.sample.params).")
_CKPT_STEP = flags.DEFINE_integer("checkpoint_step", None, "Checkpoint step (default: latest).")
_NPZ = flags.DEFINE_string("npz", None, "sample: also save the raw samples and labels here.")
_COORD = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
_NPROC = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
_PID = flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
_CACHE = flags.DEFINE_string("compilation_cache_dir", os.path.expanduser("~/.cache/diffjax/xla"),
                             "XLA's persistent compilation cache (reruns, sample and evaluate skip "
                             "compiles); '' disables it. JAX_COMPILATION_CACHE_DIR takes precedence.")
_TOPOLOGY = flags.DEFINE_string("topology", None, "preflight: a TPU slice to compile for without a "
                                "TPU, e.g. v5p:4x4x4 or v5e:16x16 (needs the 'tpu' extra); "
                                "default: this machine's devices.")
_JSON = flags.DEFINE_string("json", None, "preflight: also write the report as JSON here.")
_NO_SAMPLE = flags.DEFINE_bool("skip_sampler", False, "preflight: compile the train step only.")
_DIST = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with "
                          "auto-detected arguments (Cloud TPU pods, SLURM).")


class CommandError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


def _init_distributed():
    import jax

    if _COORD.value or _NPROC.value:
        if _COORD.value is None or _NPROC.value is None or _PID.value is None:
            raise CommandError("multi-host needs all of --coordinator_address, --num_processes and "
                               "--process_id")
        jax.distributed.initialize(coordinator_address=_COORD.value, num_processes=_NPROC.value,
                                   process_id=_PID.value)
    elif _DIST.value:
        jax.distributed.initialize()


def _init_compilation_cache():
    import jax

    if jax.config.jax_compilation_cache_dir or not _CACHE.value:
        return  # the user's own cache (env var or config) wins
    jax.config.update("jax_compilation_cache_dir", _CACHE.value)


def _need_workdir(cmd: str) -> str:
    if not _WORKDIR.value:
        raise CommandError(f"diffjax {cmd} needs --workdir")
    return _WORKDIR.value


def cmd_train():
    from diffjax.training import trainer

    workdir = _need_workdir("train")
    if _CONFIG.value is None:
        raise CommandError("diffjax train needs --config (e.g. --config configs/digits.py)")
    summary = trainer.train(_CONFIG.value, workdir)
    print(json.dumps(_printable(summary), indent=1))


def cmd_sample():
    from diffjax.training import sampling

    workdir = _need_workdir("sample")
    run = sampling.load(workdir, step=_CKPT_STEP.value)
    s = run.config.sample
    num = _NUM.value or s.num
    x = sampling.generate(run, num, sampler=_SAMPLER.value or s.sampler,
                          steps=_STEPS.value or s.steps,
                          guidance=s.guidance if _GUIDANCE.value is None else _GUIDANCE.value,
                          seed=_SEED.value, params_name=_PARAMS.value)
    out = _OUT.value or os.path.join(workdir, "sample.png")
    ncol = run.num_classes if run.num_classes and num % run.num_classes == 0 else None
    sampling.save_grid(x, out, ncol=ncol)
    if _NPZ.value:
        import numpy as np
        np.savez(_NPZ.value, x=x, label=sampling.default_labels(num, run.num_classes))
    print(json.dumps({"out": out, "num": num, "checkpoint_step": run.step}))


def cmd_evaluate():
    from diffjax.training import evaluation, sampling

    workdir = _need_workdir("evaluate")
    run = sampling.load(workdir, step=_CKPT_STEP.value)
    res = evaluation.evaluate(run, workdir, num_samples=_NUM.value, sampler=_SAMPLER.value,
                              steps=_STEPS.value, guidance=_GUIDANCE.value, params_name=_PARAMS.value)
    res["checkpoint_step"] = run.step
    if jax_process_index() == 0:
        with open(os.path.join(workdir, "eval.json"), "w", encoding="utf-8") as f:
            json.dump(_printable(res), f, indent=1)
    print(json.dumps(_printable(res), indent=1))


class DoesNotFit(Exception):
    """preflight: the config does not fit (or compile) on the target; the message says what to change."""


def cmd_preflight():
    """Compile the real sharded train step and sampling loop for a topology; print the fit table."""
    import jax

    from diffjax.preflight import report

    if _CONFIG.value is None:
        raise CommandError("diffjax preflight needs --config (e.g. --config "
                           "configs/imagenet256_dit_xl2.py --topology v5p:4x4x4)")
    target = _TOPOLOGY.value or f"this machine ({jax.default_backend()})"
    sample = not _NO_SAMPLE.value
    if _TOPOLOGY.value:
        from diffjax.preflight import chips
        try:
            chips.devices(_TOPOLOGY.value)  # unknown name, impossible slice or no libtpu: say so
        except RuntimeError as e:
            raise CommandError(str(e)) from e
    try:
        if _TOPOLOGY.value:
            r = report.tpu(_CONFIG.value, _TOPOLOGY.value, sample=sample)
        else:
            r = report.run(_CONFIG.value, jax.devices(), target=target, sample=sample)
    except ValueError:
        raise  # a bad mesh or input shape: the message already names the config key
    except Exception as e:  # noqa: BLE001 - XLA's compile errors come as several types
        first = str(e).strip().splitlines()[0][:600] if str(e).strip() else type(e).__name__
        raise DoesNotFit(f"the train step does not compile for {target}: {type(e).__name__}: "
                         f"{first}\ncheck config.mesh (axis sizes must divide the device count "
                         "and the batch) and config.sharding.rules (a sharded dimension must "
                         "divide by its mesh axis size).") from e
    print(report.format_table(r))
    if _JSON.value:
        with open(_JSON.value, "w", encoding="utf-8") as f:
            json.dump(r.as_dict(), f, indent=1)
    if not r.fits():
        raise DoesNotFit(f"does not fit on {target}.\n{report.advice(r)}")


def jax_process_index() -> int:
    import jax
    return jax.process_index()


def _printable(d: dict) -> dict:
    return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in d.items()}


def _main(argv):
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"usage: diffjax {{{','.join(COMMANDS)}}} [flags]; got "
                             f"{' '.join(argv[1:]) or 'no command'}")
    cmd = argv[1]
    from diffjax.training import checkpoint, metrics, trainer

    metrics.setup_logging()
    try:
        if cmd != "preflight":  # deviceless TPU executables are not worth caching on disk
            _init_compilation_cache()
            _init_distributed()
        {"train": cmd_train, "sample": cmd_sample, "evaluate": cmd_evaluate,
         "preflight": cmd_preflight}[cmd]()
    except (CommandError, ValueError, FileNotFoundError, checkpoint.CheckpointError,
            trainer.NonFiniteLossError, DoesNotFit) as e:
        logging.error("diffjax %s: %s", cmd, e)
        sys.exit(f"diffjax {cmd}: error: {e}")


def main(argv=None):
    """Console-script entry point (``diffjax = diffjax.cli:main``). Run from the command line (argv
    None), it first re-executes itself under jemalloc, or else glibc's huge-page tunable, where that
    helps XLA:CPU (``diffjax.runtime``; DIFFJAX_MALLOC=jemalloc|hugetlb|default picks one,
    DIFFJAX_MALLOC_TUNING=0 turns it off)."""
    if argv is None:
        try:
            runtime.maybe_reexec("diffjax.cli", sys.argv)
        except (ValueError, FileNotFoundError) as e:
            sys.exit(f"diffjax: error: {e}")
    app.run(_main, argv=argv)


if __name__ == "__main__":
    main()
