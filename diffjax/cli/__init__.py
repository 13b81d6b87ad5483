"""The ``diffjax`` command: train, sample, evaluate, preflight.

    diffjax train    --config configs/digits.py --workdir DIR [--config.key=value ...]
    diffjax distill  --config configs/distill_progressive.py --teacher RUN --workdir DIR
    diffjax sample   --workdir DIR --num 100 --sampler heun --steps 18 --guidance 2 --out grid.png
    diffjax evaluate --workdir DIR [--num 500 --sampler heun --steps 18 --guidance 2]
    diffjax evaluate --workdir DIR --metric fid --ref stats.npz --inception FILE [--write_ref]
    diffjax sample   --workdir DIR --guidance NAME --guidance.scale W --guidance.FIELD V ...
    diffjax preflight --config configs/imagenet256_dit_xl2.py --topology v5p:4x4x4 [--config.x=y]
                     [--teacher RUN]   (a distillation config: its teacher's state is counted)
    diffjax restore  --workdir DIR --operator inpaint|sr|colorize|deblur --input FILE --out PNG
    diffjax search   --workdir DIR --method dts|dts_star|dts_uniform|bon|random|zero_order|paths|smc
                     --budget NFE --reward class:7|even|odd|... --num N --out grid.png
    diffjax convert  --from diffusers DIR --workdir OUT   (then: diffjax sample --workdir OUT)
    diffjax encode   --config CFG --workdir DIR   (config.latent.vae: the latents train reads)
    diffjax classify --workdir DIR --images FILE|FOLDER|--split test [--schedule cifar10 --num N]
    diffjax text     --workdir DIR [--num N --steps N --sampler tau_leaping|euler|aoarm]
    diffjax forecast --workdir DIR [--num N --energy quantile --guidance_scale S --refine lmc]
    diffjax COMMAND --help      that command's flags only, with the valid samplers, guidance
                                methods and parameter sets (those of the run with --workdir DIR)

Configs are Python files with ``get_config()``, locked: an unknown key (with ml_collections' "did
you mean" suggestion), a value of the wrong type or a config file that does not exist is an error
naming the key or the file. ``train`` resumes from the latest checkpoint in DIR if there is one.
Several hosts: pass --coordinator_address/--num_processes/--process_id (or --distributed on a
Cloud TPU pod, where jax.distributed.initialize finds them itself); every host runs the same
command.

Every user mistake is one line on stderr, ``diffjax COMMAND: error: ...``, and exit status 1, never
a traceback (``--verbosity=1`` logs the traceback as well): bad config overrides, a flag the command
does not take, a value out of range, a workdir that is not a run, a checkpoint step that was not
saved (the saved ones are listed), an unknown sampler / spacing / parameter set (the valid ones are
listed), 'pfgmpp' on a run that is not PFGM++. A value typed on the command line is used or
refused, never replaced by a default: ``--num`` and ``--steps`` must be positive, and a negative
``--guidance`` (which pushes samples *away* from their class) needs ``--allow_negative_guidance``;
0 < w < 1 interpolates between the unconditional (0) and conditional (1) model and is allowed.
Guidance comes from the registry in ``diffjax.guidance``: ``--guidance NAME`` picks a method,
``--guidance.FIELD V`` sets one of its fields (an unknown method or field is an error listing the
valid ones), and a bare number ``--guidance W`` is classifier-free guidance with scale W. Fields
not given keep the run's config.sample.guidance / config.eval.guidance.
``sample`` and ``evaluate`` print the settings they used (sampler, steps, spacing, guidance,
parameter set, checkpoint step, seed, number of samples): one line on stderr, the same keys in the
JSON they print on stdout.

Exit status:
    0    done
    1    a user error (the one line says what is wrong), or preflight: the config does not fit
    75   train was preempted: SIGTERM or the first Ctrl-C in the train loop; the checkpoint of the
         step it stopped at is saved, and rerunning the same command resumes from it
         (``preemption.EXIT_PREEMPTED``, sysexits' EX_TEMPFAIL)
    130  stopped at once by Ctrl-C (a second one in the train loop, or one before or after it): the
         last checkpoint written is intact; a rerun of train resumes from it
"""
from __future__ import annotations

import difflib
import json
import math
import os
import sys
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

from diffjax import logs, runtime
from diffjax.cli import help as help_lib
from diffjax.cli.messages import fail, flag_error_message, message_of, user_error_types
from diffjax.cli.table import (COMMANDS, EXIT_INTERRUPTED, OUR_FLAGS, CommandError,  # noqa: F401
                               DoesNotFit)
from diffjax.cli import restore as _restore  # noqa: E402  (defines the restore flags)
from diffjax.cli import search as _search  # noqa: E402  (defines the search flags)
from diffjax.cli import distill as _distill  # noqa: E402  (defines the distill flags)
from diffjax.cli import convert as _convert  # noqa: E402  (defines the convert flags)
from diffjax.cli import encode as _encode  # noqa: E402
from diffjax.cli import fid as _fid  # noqa: E402  (defines the evaluate --metric fid flags)
from diffjax.cli import classify as _classify  # noqa: E402  (defines the classify flags)
from diffjax.cli import text as _text  # noqa: E402  (defines the text flags)
from diffjax.cli import forecast as _forecast  # noqa: E402  (defines the forecast flags)

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (a Python file "
                                          "with get_config()), e.g. configs/digits.py; "
                                          "--config.KEY=VALUE after it overrides one key.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, samples.")
_NUM = flags.DEFINE_integer("num", None, "Number of samples, >= 1 (sample: default "
                            "config.sample.num; evaluate: default config.eval.num_samples; "
                            "search: default 16).")
_SAMPLER = flags.DEFINE_string("sampler", None, "Sampler name (default: the run's "
                               "config.sample.sampler / config.eval.sampler; search: ddpm for "
                               "dts, dts_star, dts_uniform, random and smc, dpmpp_2m for the "
                               "others).")
_STEPS = flags.DEFINE_integer("steps", None, "Number of sampler steps, >= 1 (default: the run's "
                              "config.sample.steps / config.eval.steps; search: 50).")
_SPACING = flags.DEFINE_string("spacing", None, "Noise-level grid of the sampler steps (default: "
                               "the run's config.sample.spacing).")
_GUIDANCE = flags.DEFINE_string("guidance", None, "Guidance: a method name (listed below) or a "
                                "number W, classifier-free guidance with scale W of a "
                                "class-conditional run: 1 = none (the conditional model), 0 = the "
                                "unconditional model, 0 < w < 1 between them, w > 1 stronger; "
                                "negative w needs --allow_negative_guidance. --guidance.FIELD V sets "
                                "a field of the method (e.g. --guidance.scale 3). Default: the "
                                "run's config.sample.guidance / config.eval.guidance.")
_ALLOW_NEG = flags.DEFINE_bool("allow_negative_guidance", False, "Accept --guidance < 0, which "
                               "reverses the condition (samples pushed away from their class).")
_OUT = flags.DEFINE_string("out", None, "Output PNG. Default: WORKDIR/sample.png (restore: "
                           "WORKDIR/restore.png, search: WORKDIR/search.png).")
_SEED = flags.DEFINE_integer("seed", None, "Sampling seed (default: 0 for sample, 1234 for "
                             "evaluate).")
_PARAMS = flags.DEFINE_string("params", None, "Parameter set: 'params' or an EMA name such as "
                              "'power_0.1' (default: the run's config.sample.params).")
_CKPT_STEP = flags.DEFINE_integer("checkpoint_step", None, "Checkpoint step, one of those saved "
                                  "under WORKDIR/checkpoints (default: the latest).")
_NPZ = flags.DEFINE_string("npz", None, "Also save the raw samples and labels here (.npz).")
_COORD = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
_NPROC = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
_PID = flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
_CACHE = flags.DEFINE_string("compilation_cache_dir", os.path.expanduser("~/.cache/diffjax/xla"),
                             "XLA's persistent compilation cache (reruns, sample and evaluate skip "
                             "compiles); '' disables it. JAX_COMPILATION_CACHE_DIR takes precedence.")
_TOPOLOGY = flags.DEFINE_string("topology", None, "A TPU slice to compile for without a "
                                "TPU, e.g. v5p:4x4x4 or v5e:16x16 (needs the 'tpu' extra); "
                                "default: this machine's devices.")
_JSON = flags.DEFINE_string("json", None, "Also write the report as JSON here.")
_NO_SAMPLE = flags.DEFINE_bool("skip_sampler", False, "Compile the train step only.")
_SLICES = flags.DEFINE_integer("slices", 1, "preflight: compile for this many slices of "
                               "--topology (multi-slice; config.dcn_mesh says which mesh axes "
                               "span the slices, e.g. --config.dcn_mesh.data=2).")
_DIST = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with "
                          "auto-detected arguments (Cloud TPU pods, SLURM).")

# ---- flags -------------------------------------------------------------------------------------
def parse_flags(argv):
    """app.run's flags_parser: help, then absl's parsing with every error as one line."""
    help_lib.handle_help(argv)
    cmd = help_lib.command_in(argv[1:])
    argv = _take_guidance_fields(list(argv), cmd)
    config_flag = flags.FLAGS["config"]
    if hasattr(config_flag, "_sys_argv"):
        config_flag._sys_argv = list(argv)   # overrides come from this argv (main(argv) in-process)
    try:
        rest = flags.FLAGS(list(argv))
        if flags.FLAGS["config"].present and _CONFIG.value is not None:
            _CONFIG.value.keys()  # a config file that failed to load raises only when read
    except Exception as e:  # noqa: BLE001 - absl's and ml_collections' errors come as many types
        fail(cmd, flag_error_message(e, argv, cmd or ""))
    positional = rest[1:]
    if not positional or positional[0] not in COMMANDS:
        got = " ".join(positional) or "no command"
        hint = difflib.get_close_matches(positional[0], list(COMMANDS), 1) if positional else []
        fail(None, f"unknown command {got!r}" + (f" (did you mean {hint[0]}?)" if hint else "") +
              f"; usage: diffjax {{{','.join(COMMANDS)}}} [flags] (diffjax --help lists them)")
    cmd = positional[0]
    if cmd in POSITIONAL_COMMANDS:
        POSITIONAL[:] = positional[1:]
    elif len(positional) > 1:
        fail(cmd, f"unexpected argument(s) {' '.join(positional[1:])!r}: flags are --name=value "
                   f"(diffjax {cmd} --help lists them)")
    allowed = COMMANDS[cmd][2]
    wrong = [n for n in OUR_FLAGS if flags.FLAGS[n].present and n not in allowed]
    if GUIDANCE_FIELDS and "guidance" not in allowed:
        wrong += [f"guidance.{f}" for f in GUIDANCE_FIELDS]
    if wrong:
        fail(cmd, f"{', '.join('--' + n for n in wrong)}: not a flag of diffjax {cmd} (its flags: "
                   f"{', '.join('--' + n for n in allowed)})")
    return rest


GUIDANCE_FIELDS: dict[str, str] = {}   # --guidance.FIELD V from the command line (as typed)
POSITIONAL_COMMANDS = ("convert",)     # commands that take positional arguments (the source DIR)
POSITIONAL: list[str] = []


def _take_guidance_fields(argv: list[str], cmd: str | None) -> list[str]:
    """Remove ``--guidance.FIELD=V`` / ``--guidance.FIELD V`` from argv into GUIDANCE_FIELDS (the
    fields depend on the method, so they are not absl flags; the registry checks them)."""
    GUIDANCE_FIELDS.clear()
    out, i = [argv[0]], 1
    while i < len(argv):
        a = argv[i]
        head = a.lstrip("-")
        if a.startswith("-") and head.startswith("guidance.") and len(a) - len(head) in (1, 2):
            name, eq, value = head[len("guidance."):].partition("=")
            if not eq:
                if i + 1 >= len(argv):
                    fail(cmd, f"--guidance.{name} needs a value (--guidance.{name}=V)")
                value, i = argv[i + 1], i + 1
            if not name:
                fail(cmd, "--guidance.: name a field, e.g. --guidance.scale=3")
            GUIDANCE_FIELDS[name] = value
        else:
            out.append(a)
        i += 1
    return out


# ---- the commands --------------------------------------------------------------------------------
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


def cmd_train(cmd: str = "train"):
    from diffjax.training import preemption, trainer

    workdir = _need_workdir(cmd)
    if cmd == "distill":
        config = _distill.student_config(_CONFIG.value)
    elif _CONFIG.value is None:
        raise CommandError("diffjax train needs --config (e.g. --config configs/digits.py)")
    else:
        config = _CONFIG.value
    summary = trainer.train(config, workdir)
    print(json.dumps(_printable(summary), indent=1), flush=True)
    if summary.get("preempted"):
        sys.stderr.write(f"diffjax {cmd}: preempted at step {summary.get('step')}; rerun the same "
                         f"command to resume\n")
        sys.stderr.flush()
        sys.exit(preemption.EXIT_PREEMPTED)


# The draw settings: setting -> the flag that sets it.
_SETTING_FLAGS = {"num": _NUM, "sampler": _SAMPLER, "steps": _STEPS, "spacing": _SPACING,
                  "guidance": _GUIDANCE, "params": _PARAMS, "seed": _SEED}


def _number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _typed() -> tuple[dict, dict]:
    """The draw settings typed on the command line (guidance as a partial section) and the flag
    name of each setting."""
    names = {k: f"--{h.name}" for k, h in _SETTING_FLAGS.items()}
    typed = {k: h.value for k, h in _SETTING_FLAGS.items() if h.value is not None}
    g = typed.pop("guidance", None)
    if g is not None or GUIDANCE_FIELDS:
        sec = {}
        if g is not None:
            w = _number(g)
            sec = {"name": "classifier_free", "scale": w} if w is not None else {"name": g}
        typed["guidance"] = {**sec, **GUIDANCE_FIELDS}
    return typed, names


def _check_typed_numbers():
    """The numbers typed for sample / evaluate, checked before jax is even imported (an instant
    answer); the same rules as the settings' checks."""
    typed, names = _typed()
    for k in ("num", "steps"):
        if k in typed and typed[k] < 1:
            raise CommandError(f"{names[k]} must be a positive integer, got {typed[k]}")
    g = _number(_GUIDANCE.value) if _GUIDANCE.value is not None else None
    if g is not None and not math.isfinite(g):
        raise CommandError(f"--guidance must be a finite number, got {g}")
    scale, flag = g, "--guidance"
    if "scale" in GUIDANCE_FIELDS:
        scale, flag = _number(GUIDANCE_FIELDS["scale"]), "--guidance.scale"
        if scale is None or not math.isfinite(scale):
            raise CommandError(f"--guidance.scale must be a finite number, got "
                               f"{GUIDANCE_FIELDS['scale']!r}")
    if scale is not None and scale < 0 and not _ALLOW_NEG.value:
        raise CommandError(f"{flag} {scale:g} is negative, which reverses the condition (samples "
                           f"are pushed away from their class); pass --allow_negative_guidance if "
                           f"that is what you want (0 = unconditional, 1 = no guidance)")
    if _CKPT_STEP.value is not None and _CKPT_STEP.value < 0:
        raise CommandError(f"--checkpoint_step must be >= 0, got {_CKPT_STEP.value}")


def _typed_settings() -> tuple[dict, dict]:
    """The draw settings typed on the command line, checked before anything is read; and the
    flag name of each setting (for messages)."""
    _check_typed_numbers()
    typed, names = _typed()
    from diffjax import inference

    for k, v in typed.items():
        inference.check_setting(k, v, names[k])
    return typed, names


def refuse_latent(cmd: str, workdir: str, config=None) -> None:
    """A CommandError if ``workdir`` is a latent run (``cmd`` acts on images)."""
    from diffjax import inference

    config = config or inference.load_config(workdir)
    if (config.get("latent") or {}).get("vae"):
        raise CommandError(f"diffjax {cmd} works in pixel space and {workdir} is a latent run "
                           f"(config.latent.vae = {config.latent.vae}); use diffjax sample")


def _load_run(workdir: str, typed: dict, names: dict, pixel_space: str | None = None):
    """The run of ``workdir``; the typed settings that depend on it (parameter set, PFGM++) are
    checked against its config.json before the checkpoint is restored. ``pixel_space``: the
    command, which refuses a latent run (its operators and rewards act on images)."""
    from diffjax import inference

    config = inference.load_config(workdir)
    if pixel_space:
        refuse_latent(pixel_space, workdir, config)
    for k, v in typed.items():
        inference.check_setting(k, v, names[k], config=config)
    return inference.load(workdir, step=_CKPT_STEP.value, config=config,
                          params=typed.get("params", config.sample.params))


def _summary_line(cmd: str, workdir: str, st: dict, out: str | None = None) -> str:
    from diffjax import guidance as guidance_lib

    guidance = ("no guidance" if st["guidance"]["name"] == "none"
                else f"guidance {guidance_lib.describe(st['guidance'])}")
    line = (f"diffjax {cmd}: {st['num']} samples from {workdir} checkpoint step "
            f"{st['checkpoint_step']}, params {st['params']}, sampler {st['sampler']}, "
            f"{st['steps']} step{'s' if st['steps'] != 1 else ''} ({st['spacing']} spacing), "
            f"{guidance}, seed {st['seed']}")
    return line + (f" -> {out}" if out else "")


def _say(line: str):
    if jax_process_index() == 0:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def cmd_sample():
    workdir = _need_workdir("sample")
    typed, names = _typed_settings()
    from diffjax import inference

    run = _load_run(workdir, typed, names)
    st = inference.settings(run, "sample", names=names, **typed)
    out = _OUT.value or os.path.join(workdir, "sample.png")
    _say(_summary_line("sample", workdir, st, out))
    num = st["num"]
    x = inference.generate(run, num, sampler=st["sampler"], steps=st["steps"],
                           guidance=st["guidance"], seed=st["seed"], params_name=st["params"],
                           spacing=st["spacing"])
    ncol = run.num_classes if run.num_classes and num % run.num_classes == 0 else None
    result = {"out": out, **st}
    if run.vae is not None:         # a latent run: the images are the VAE's decode
        result["vae"] = run.vae.folder
    if jax_process_index() == 0:   # every process holds all samples; one writes them
        inference.save_grid(x, out, ncol=ncol)
    if _NPZ.value:
        if jax_process_index() == 0:
            import numpy as np
            np.savez(_NPZ.value, x=x, label=inference.default_labels(num, run.num_classes))
        result["npz"] = _NPZ.value
    print(json.dumps(result))


def cmd_evaluate():
    workdir = _need_workdir("evaluate")
    typed, names = _typed_settings()
    from diffjax import inference
    from diffjax.training import evaluation

    run = _load_run(workdir, typed, names)
    st = inference.settings(run, "eval", names=names, **typed)
    _say(_summary_line("evaluate", workdir, st))
    if _fid.metric() == "fid":
        print(json.dumps(_printable(_fid.evaluate_fid(run, workdir, st)), indent=1))
        return
    res = evaluation.evaluate(run, workdir, num_samples=st["num"], sampler=st["sampler"],
                              steps=st["steps"], guidance=st["guidance"], seed=st["seed"],
                              params_name=st["params"], spacing=st["spacing"])
    res.update(st)
    if jax_process_index() == 0:
        with open(os.path.join(workdir, "eval.json"), "w", encoding="utf-8") as f:
            json.dump(_printable(res), f, indent=1)
    print(json.dumps(_printable(res), indent=1))


def cmd_preflight():
    """Compile the real sharded train step and sampling loop for a topology; print the fit table."""
    import jax

    from diffjax.preflight import report

    if _CONFIG.value is None:
        raise CommandError("diffjax preflight needs --config (e.g. --config "
                           "configs/imagenet256_dit_xl2.py --topology v5p:4x4x4)")
    target = _TOPOLOGY.value or f"this machine ({jax.default_backend()})"
    sample = not _NO_SAMPLE.value
    config = _CONFIG.value
    if _distill.teacher_given():    # a distillation config: the student with its teacher's state
        config = _distill.student_config(config)
    if _TOPOLOGY.value:
        from diffjax.preflight import chips
        try:
            chips.devices(_TOPOLOGY.value, _SLICES.value)  # unknown name, impossible slice
            # or no libtpu: say so
        except RuntimeError as e:
            raise CommandError(str(e)) from e
    try:
        if _TOPOLOGY.value:
            r = report.tpu(config, _TOPOLOGY.value, sample=sample, num_slices=_SLICES.value)
        else:
            r = report.run(config, jax.devices(), target=target, sample=sample)
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


_RUN = {"train": cmd_train, "distill": lambda: cmd_train("distill"), "sample": cmd_sample, "evaluate": cmd_evaluate,
        "preflight": cmd_preflight, "restore": _restore.cmd_restore,
        "search": _search.cmd_search,
        "convert": lambda: _convert.cmd_convert(_need_workdir("convert"), POSITIONAL),
        "encode": lambda: _encode.cmd_encode(_CONFIG.value, _need_workdir("encode")),
        "classify": _classify.cmd_classify, "text": _text.cmd_text,
        "forecast": _forecast.cmd_forecast}


def _main(argv):
    cmd = argv[1]
    logs.setup_logging(verbosity_given=flags.FLAGS["verbosity"].present or flags.FLAGS["v"].present)
    try:
        if cmd in ("sample", "evaluate"):
            _need_workdir(cmd)
            _check_typed_numbers()
        if cmd == "evaluate":
            _fid.check_flags()
        if cmd == "restore":            # its mistakes answered before jax is imported
            _need_workdir(cmd)
            _restore.check_flags()
        if cmd == "search":
            _need_workdir(cmd)
            _search.check_flags()
        if cmd == "classify":
            _need_workdir(cmd)
            _classify.check_flags()
        if cmd in ("text", "forecast"):
            _need_workdir(cmd)
            (_text if cmd == "text" else _forecast).check_flags()
        if cmd == "convert":
            _need_workdir(cmd)
            _convert.check_flags(POSITIONAL)
        if cmd != "preflight":  # deviceless TPU executables are not worth caching on disk
            logs.skip_absent_tpu()  # no libtpu start-up noise where there is no TPU
            _init_compilation_cache()
            _init_distributed()
        _RUN[cmd]()
    except Exception as e:  # noqa: BLE001 - only the user's mistakes; the rest is re-raised
        if not isinstance(e, user_error_types()):
            raise
        logging.debug("diffjax %s: %s", cmd, traceback.format_exc())  # shown with --verbosity=1
        fail(cmd, message_of(e))


def main(argv=None):
    """Console-script entry point (``diffjax = diffjax.cli:main``). Run from the command line (argv
    None), it first re-executes itself under jemalloc, or else glibc's huge-page tunable, where that
    helps XLA:CPU (``diffjax.runtime``; DIFFJAX_MALLOC=jemalloc|hugetlb|default picks one,
    DIFFJAX_MALLOC_TUNING=0 turns it off)."""
    logs.quiet_environment()  # before jax, tensorflow or clu is imported (they read it on import)
    argv_given = argv is not None
    argv = list(sys.argv if argv is None else argv)
    cmd = help_lib.command_in(argv[1:])
    try:
        if not argv_given:
            try:
                runtime.maybe_reexec("diffjax.cli", argv)
            except (ValueError, FileNotFoundError) as e:
                fail(None, str(e))
        app.run(_main, argv=argv, flags_parser=parse_flags)
    except KeyboardInterrupt:
        what = ("; the last checkpoint written is intact: rerun the same command to resume from it"
                if cmd in ("train", "distill") else "")
        sys.stderr.write(f"diffjax{' ' + cmd if cmd in COMMANDS else ''}: interrupted{what}\n")
        sys.stderr.flush()
        sys.exit(EXIT_INTERRUPTED)


