"""The ``diffjax`` command: train, sample, evaluate, preflight.

    diffjax train    --config configs/digits.py --workdir DIR [--config.key=value ...]
    diffjax sample   --workdir DIR --num 100 --sampler heun --steps 18 --guidance 2 --out grid.png
    diffjax evaluate --workdir DIR [--num 500 --sampler heun --steps 18 --guidance 2]
    diffjax preflight --config configs/imagenet256_dit_xl2.py --topology v5p:4x4x4 [--config.x=y]
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
import re
import sys
import textwrap
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

from diffjax import logs, runtime

EXIT_OK, EXIT_USER_ERROR, EXIT_INTERRUPTED = 0, 1, 130
EXIT_PREEMPTED = 75  # = diffjax.training.preemption.EXIT_PREEMPTED (not imported here: it loads jax)

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (a Python file "
                                          "with get_config()), e.g. configs/digits.py; "
                                          "--config.KEY=VALUE after it overrides one key.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, samples.")
_NUM = flags.DEFINE_integer("num", None, "Number of samples, >= 1 (sample: default "
                            "config.sample.num; evaluate: default config.eval.num_samples).")
_SAMPLER = flags.DEFINE_string("sampler", None, "Sampler name (default: the run's "
                               "config.sample.sampler / config.eval.sampler).")
_STEPS = flags.DEFINE_integer("steps", None, "Number of sampler steps, >= 1 (default: the run's "
                              "config.sample.steps / config.eval.steps).")
_SPACING = flags.DEFINE_string("spacing", None, "Noise-level grid of the sampler steps (default: "
                               "the run's config.sample.spacing).")
_GUIDANCE = flags.DEFINE_float("guidance", None, "Classifier-free guidance scale w of a "
                               "class-conditional run: 1 = none (the conditional model), 0 = the "
                               "unconditional model, 0 < w < 1 between them, w > 1 stronger; "
                               "negative w needs --allow_negative_guidance (default: the run's "
                               "config.sample.guidance / config.eval.guidance).")
_ALLOW_NEG = flags.DEFINE_bool("allow_negative_guidance", False, "Accept --guidance < 0, which "
                               "reverses the condition (samples pushed away from their class).")
_OUT = flags.DEFINE_string("out", None, "Output PNG. Default: WORKDIR/sample.png.")
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
_DIST = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with "
                          "auto-detected arguments (Cloud TPU pods, SLURM).")

# Every flag this module defines; each command takes the ones listed in COMMANDS. absl's own flags
# (--verbosity, --log_dir, --flagfile, ...) are accepted by every command.
OUR_FLAGS = tuple(h.name for h in (
    _CONFIG, _WORKDIR, _NUM, _SAMPLER, _STEPS, _SPACING, _GUIDANCE, _ALLOW_NEG, _OUT, _SEED,
    _PARAMS, _CKPT_STEP, _NPZ, _COORD, _NPROC, _PID, _CACHE, _TOPOLOGY, _JSON, _NO_SAMPLE, _DIST))
_HOSTS = ("coordinator_address", "num_processes", "process_id", "distributed",
          "compilation_cache_dir")
_DRAW = ("workdir", "num", "sampler", "steps", "spacing", "guidance", "allow_negative_guidance",
         "params", "checkpoint_step", "seed")

EXIT_STATUS = (f"exit status: {EXIT_OK} done; {EXIT_USER_ERROR} user error (one line on stderr says "
               f"what is wrong){{}}; {EXIT_INTERRUPTED} stopped at once by Ctrl-C")
_TRAIN_EXIT = (f"; {EXIT_PREEMPTED} preempted (SIGTERM, or the first Ctrl-C while training): the "
               "checkpoint of that step is saved, rerun the same command to resume; a second "
               "Ctrl-C stops at once (the last checkpoint written is intact)")

# name -> (one line, usage, the flags it takes)
COMMANDS = {
    "train": ("train (or resume) a model from a config file in a run directory",
              "--config FILE --workdir DIR [--config.KEY=VALUE ...]",
              ("config", "workdir") + _HOSTS),
    "sample": ("draw samples from a trained run and save them as a PNG grid",
               "--workdir DIR [--num N --sampler NAME --steps N --guidance W --out PNG]",
               _DRAW + ("out", "npz") + _HOSTS),
    "evaluate": ("sample quality of a trained run: Frechet distance, class accuracy",
                 "--workdir DIR [--num N --sampler NAME --steps N --guidance W]",
                 _DRAW + _HOSTS),
    "preflight": ("compile a config for a TPU slice (or this machine): memory, FLOPs, fit",
                  "--config FILE [--topology v5p:4x4x4] [--config.KEY=VALUE ...]",
                  ("config", "topology", "json", "skip_sampler")),
}
HELP_FLAGS = ("-h", "--help", "-help", "--helpshort", "-helpshort", "-?")
_METAVAR = {"config": "FILE", "workdir": "DIR", "num": "N", "steps": "N", "sampler": "NAME",
            "spacing": "NAME", "guidance": "W", "params": "NAME", "checkpoint_step": "STEP",
            "seed": "N", "out": "PNG", "npz": "FILE", "coordinator_address": "HOST:PORT",
            "num_processes": "N", "process_id": "I", "compilation_cache_dir": "DIR",
            "topology": "SLICE", "json": "FILE"}


class CommandError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


class DoesNotFit(Exception):
    """preflight: the config does not fit (or compile) on the target; the message says what to change."""


# ---- one line per mistake ------------------------------------------------------------------------
def _fail(cmd: str | None, message: str, status: int = EXIT_USER_ERROR):
    prog = f"diffjax {cmd}" if cmd else "diffjax"
    sys.stderr.write(f"{prog}: error: {message}\n")
    sys.stderr.flush()
    sys.exit(status)


def _user_error_types() -> tuple:
    """The exception types that are a user's mistake: printed as their message, no traceback.
    Types of modules not imported yet cannot have been raised and are not imported for this."""
    types = [CommandError, DoesNotFit, ValueError, OSError]
    for module, names in (("diffjax.training.checkpoint", ("CheckpointError",)),
                          ("diffjax.training.trainer", ("NonFiniteLossError",)),
                          ("diffjax.training.workdir", ("WorkdirBusy",))):
        mod = sys.modules.get(module)
        types += [getattr(mod, n) for n in names if mod is not None and hasattr(mod, n)]
    return tuple(types)


def _message(e: BaseException) -> str:
    text = str(e).strip()
    if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str):
        text = e.args[0]            # str(KeyError) is the repr of its argument
    return text or type(e).__name__


def _config_arg(argv) -> str | None:
    """The value of --config in argv (None if absent)."""
    for i, a in enumerate(argv):
        m = re.match(r"^--?config(=(.*))?$", a)
        if m:
            return m.group(2) if m.group(1) else (argv[i + 1] if i + 1 < len(argv) else None)
    return None


def _overrides(argv) -> list[str]:
    """Config keys overridden in argv (--config.a.b=1 -> 'a.b'), in order."""
    out = []
    for a in argv:
        m = re.match(r"^--?(?:no)?config\.([^=]+)", a)
        if m and m.group(1) not in out:
            out.append(m.group(1))
    return out


def _unquote(text: str) -> str:
    """ml_collections' KeyError text arrives repr()'d, sometimes twice ('\\'lrr\\'\\nDid you...')."""
    import ast
    for _ in range(3):
        t = text.strip()
        if len(t) >= 2 and t[0] == t[-1] and t[0] in "'\"":
            try:
                text = ast.literal_eval(t)
                continue
            except (SyntaxError, ValueError):
                pass
        break
    return text


def _load_config_file(path: str):
    """get_config() of a config file, as --config loads it ('file.py' or 'file.py:ARG')."""
    import importlib.util

    file, colon, arg = path.partition(":")
    spec = importlib.util.spec_from_file_location("diffjax_cli_config", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(*([arg] if colon else []))


def _unknown_key_message(argv, raw: str) -> str:
    """'unknown config key config.optim.lrr (did you mean config.optim.lr?)' for the first override
    in argv whose path is not in the config file's config."""
    text = _unquote(raw)
    suggestion = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', text)
    path = _config_arg(argv)
    try:
        cfg = _load_config_file(path)
        keys_of = lambda node: list(node.keys())  # noqa: E731
        for override in _overrides(argv):
            node, parts = cfg, override.split(".")
            for i, part in enumerate(parts):
                keys = keys_of(node) if hasattr(node, "keys") else None
                if keys is not None and part in keys:
                    node = node[part]
                    continue
                where = "config." + ".".join(parts[:i]) if i else "the config"
                if keys is None:
                    return (f"unknown config key config.{override}: config."
                            f"{'.'.join(parts[:i])} is a value ({node!r}), not a section")
                hint = suggestion.group(1) if suggestion and suggestion.group(2) == part else None
                hint = hint or next(iter(difflib.get_close_matches(part, keys, 1)), None)
                msg = f"unknown config key config.{override}"
                if i < len(parts) - 1:
                    msg += f": there is no config.{'.'.join(parts[:i + 1])}"
                if hint:
                    msg += f" (did you mean config.{'.'.join(parts[:i] + [hint])}?)"
                elif not keys:
                    msg += (f": {where} is empty in {path}; set it whole, e.g. "
                            f"--config.{'.'.join(parts[:i])}=\"{{'{part}': VALUE}}\"")
                else:
                    msg += f"; {where} has {', '.join(sorted(keys))}"
                return msg
    except Exception:  # noqa: BLE001 - fall back to ml_collections' own words
        pass
    return "unknown config key: " + " ".join(line.strip() for line in text.splitlines() if line)


def _config_file_message(path: str | None, e: BaseException) -> str:
    file = (path or "").split(":", 1)[0]
    if not file:
        return "--config needs a file, e.g. --config configs/digits.py"
    if not os.path.exists(file):
        here = sorted(f for f in os.listdir("configs") if f.endswith(".py")) \
            if os.path.isdir("configs") else []
        hint = f" (configs/ has {', '.join(here)})" if here else ""
        return f"config file {file!r} not found{hint}"
    if os.path.isdir(file):
        return f"--config {file!r} is a directory; pass a config .py file, e.g. configs/digits.py"
    lines = [line.strip() for line in _message(e).splitlines() if line.strip()]
    return f"cannot load config file {file!r}: {lines[-1] if lines else type(e).__name__}"


def _config_code_message(path: str | None, e: BaseException) -> str | None:
    """An exception raised by the config file's own code, as 'file line N: Type: message'."""
    file = os.path.abspath((path or "").split(":", 1)[0]) if path else None
    text = _message(e)
    if "Error whilst parsing config file" in text:  # ml_collections put the traceback in the text
        lines = [line for line in text.splitlines() if line.strip()]
        where = [re.search(r'File "([^"]+)", line (\d+)', line) for line in lines]
        where = [m for m in where if m and file and os.path.abspath(m.group(1)) == file]
        loc = f" line {where[-1].group(2)}" if where else ""
        return f"config file {path}{loc}: {lines[-1].strip()}"
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if file and os.path.abspath(f.filename) == file]
    if frames:
        return f"config file {path} line {frames[-1].lineno}: {type(e).__name__}: {text}"
    return None


def _expected(flag) -> str | None:
    kind = flag.flag_type() if flag is not None else None
    return {"int": "an integer", "float": "a number", "bool": "true or false"}.get(kind)


def _flag_error_message(e: BaseException, argv, cmd: str) -> str:
    """One line for anything flag parsing raised (absl's errors, ml_collections' AttributeError /
    KeyError for unknown keys, OSError for a missing config file, the config file's own errors)."""
    path = _config_arg(argv)
    text = _message(e)
    code = _config_code_message(path, e) if path else None
    if code:
        return code
    if isinstance(e, OSError) or "earlier failure to load" in text:
        return _config_file_message(path, e)
    if isinstance(e, (AttributeError, KeyError)):
        return _unknown_key_message(argv, text)
    if isinstance(e, flags.UnrecognizedFlagError):
        name = getattr(e, "flagname", "") or text
        if name.startswith("config.") and path is None:
            return f"--{name} needs --config FILE before it (e.g. --config configs/digits.py)"
        known = [n for n in COMMANDS.get(cmd, ((), (), OUR_FLAGS))[2]]
        hint = difflib.get_close_matches(name, known, 1)
        return (f"unknown flag --{name}" + (f" (did you mean --{hint[0]}?)" if hint else "") +
                f"; diffjax {cmd + ' ' if cmd else ''}--help lists its flags")
    if isinstance(e, flags.IllegalFlagValueError):
        m = re.match(r"^flag --([^=]+)=(.*?): (.*)$", text, re.S)
        if m:
            name, reason = m.group(1), " ".join(m.group(3).split())
            flag = flags.FLAGS[name] if name in flags.FLAGS else None
            value = flag_value_in(argv, name)
            want = _expected(flag)
            if want:
                return f"--{name}={value}: expected {want}, got {value!r}"
            return f"--{name}={value}: {reason}"
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def flag_value_in(argv, name: str) -> str | None:
    """The raw text given for --name in argv (the last one), or None."""
    value = None
    for i, a in enumerate(argv):
        if a in (f"--{name}", f"-{name}"):
            value = argv[i + 1] if i + 1 < len(argv) else None
        elif a.startswith((f"--{name}=", f"-{name}=")):
            value = a.split("=", 1)[1]
    return value


# ---- help --------------------------------------------------------------------------------------
def _sampler_names() -> list[str]:
    from diffjax.core import samplers
    return sorted(samplers.SAMPLERS)


def _spacing_names() -> list[str]:
    from diffjax.core import timesteps
    return list(timesteps.SPACINGS)


def _guidance_methods() -> dict[str, str]:
    """Guidance methods the CLI applies, name -> how. One today (classifier-free, scale
    --guidance); when guidance becomes a registry this is built from it and the help follows."""
    return {"cfg": "classifier-free guidance (Ho & Salimans 2022) of a class-conditional run, "
                   "scale --guidance W: 1 = none, 0 = unconditional, 0 < w < 1 between, w > 1 "
                   "stronger, w < 0 reverses the condition (needs --allow_negative_guidance)"}


# Flags whose valid values are listed in the help: flag -> function returning them.
CHOICES = {"sampler": _sampler_names, "spacing": _spacing_names}


def _run_info(workdir: str | None) -> dict | None:
    """What --help can say about a run without loading it (config.json, run.json, checkpoints/)."""
    if not workdir:
        return None
    try:
        from diffjax.training import ema
        with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
        info = {}
        if os.path.exists(os.path.join(workdir, "run.json")):
            with open(os.path.join(workdir, "run.json"), encoding="utf-8") as f:
                info = json.load(f)

        class _Ema:  # ema.names reads .decays / .power_stds
            decays = cfg.get("ema", {}).get("decays", ())
            power_stds = cfg.get("ema", {}).get("power_stds", ())
        ckpt_dir = os.path.join(workdir, "checkpoints")
        steps = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit()) \
            if os.path.isdir(ckpt_dir) else []
        return {"params": ["params"] + ema.names(_Ema), "default_params": cfg["sample"]["params"],
                "num_classes": info.get("num_classes"), "process": cfg["diffusion"]["process"],
                "steps": steps, "sample": cfg.get("sample", {}), "eval": cfg.get("eval", {})}
    except (OSError, ValueError, KeyError, TypeError) as e:
        return {"error": f"--workdir {workdir} is not a diffjax training workdir ({e})"}


def _wrap(text: str, indent: int) -> str:
    return textwrap.fill(text, width=100, initial_indent=" " * indent,
                         subsequent_indent=" " * indent, break_on_hyphens=False)


def _flag_lines(names) -> list[str]:
    out = []
    for name in names:
        flag = flags.FLAGS[name]
        if flag.flag_type() == "bool":
            head = f"  --[no]{name}"
        else:
            head = f"  --{name} {_METAVAR.get(name, 'VALUE')}"
        text = flag.help
        if name in CHOICES:
            text += " One of: " + ", ".join(CHOICES[name]()) + "."
        if flag.default not in (None, False, "") and name != "config":
            text += f" [default: {flag.default}]"
        out.append(head)
        out.append(_wrap(text, 6))
    return out


def command_help(cmd: str, workdir: str | None = None) -> str:
    """The help of one command: its flags only, the valid values, its exit statuses."""
    what, usage, names = COMMANDS[cmd]
    lines = [f"usage: diffjax {cmd} {usage}", "", f"{what[0].upper()}{what[1:]}.", "", "flags:"]
    lines += _flag_lines(names)
    lines.append(_wrap("(and absl's logging flags: --verbosity=1 also logs the traceback of an "
                       "error, --log_dir, ...; diffjax --helpfull lists them)", 2))
    if "config" in names:
        lines += ["", "config overrides:", _wrap(
            "--config.KEY=VALUE after --config FILE sets one key (e.g. --config.optim.lr=3e-4, "
            "--config.model.channel_mult='(1, 2)'). Configs are locked: an unknown key or a value "
            "of the wrong type is an error naming the key. Every key and its default: "
            "diffjax/training/config.py.", 2)]
    if cmd in ("sample", "evaluate"):
        run = _run_info(workdir)
        section = "sample" if cmd == "sample" else "eval"
        lines += ["", "samplers (--sampler):", _wrap(", ".join(_sampler_names()) + ". 'pfgmpp' "
                  "(Heun from the PFGM++ prior) needs a run trained with "
                  "--config.diffusion.process=pfgmpp.", 2)]
        lines += ["", "guidance methods:"]
        lines += [_wrap(f"{name}: {how}", 2) for name, how in _guidance_methods().items()]
        lines += ["", "parameter sets (--params):"]
        if run and "error" not in run:
            lines.append(_wrap(f"this run ({workdir}): {', '.join(run['params'])} (default "
                               f"{run['default_params']}).", 2))
            kind = (f"class-conditional, {run['num_classes']} classes" if run["num_classes"]
                    else "unconditional: --guidance does not apply")
            defaults = run[section]
            lines.append(_wrap(
                f"process {run['process']}; {kind}; checkpoint steps saved: "
                f"{', '.join(map(str, run['steps'])) or 'none'}; defaults: "
                f"{defaults.get('num', defaults.get('num_samples'))} samples, sampler "
                f"{defaults.get('sampler')}, {defaults.get('steps')} steps, guidance "
                f"{defaults.get('guidance')}.", 2))
        else:
            if run:
                lines.append(_wrap(run["error"] + ".", 2))
            lines.append(_wrap(
                "'params' (the trained weights) or one of the run's EMA averages, named from its "
                "config: decay_<d> for each d in config.ema.decays, power_<std> for each std in "
                "config.ema.power_stds (e.g. power_0.1). Add --workdir DIR to --help to list a "
                "run's sets, classes and saved checkpoint steps.", 2))
    extra = {"train": _TRAIN_EXIT, "preflight": " or the config does not fit (the advice says "
                                                 "what to change)"}.get(cmd, "")
    lines += ["", _wrap(EXIT_STATUS.format(extra), 0)]
    return "\n".join(lines) + "\n"


def main_help() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: diffjax COMMAND [flags]    (diffjax COMMAND --help: that command's flags)", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {what}" for name, (what, _, _) in COMMANDS.items()]
    lines += ["", _wrap(EXIT_STATUS.format("; " + _TRAIN_EXIT[2:].replace(
        "preempted", "train preempted", 1)), 0)]
    return "\n".join(lines) + "\n"


def _command_in(args) -> str | None:
    return next((a for a in args if a in COMMANDS or a == "help"), None)


def _handle_help(argv):
    """Print the help asked for and exit 0; no command at all: the command list, exit 1."""
    args = list(argv[1:])
    cmd = _command_in(args)
    if cmd == "help":   # diffjax help [COMMAND]
        rest = args[args.index("help") + 1:]
        cmd = _command_in(rest)
        if cmd is None or cmd == "help":
            sys.stdout.write(main_help())
            sys.exit(EXIT_OK)
        args = rest + ["--help"]
    if any(a in ("--helpfull", "-helpfull") for a in args):
        sys.stdout.write(flags.FLAGS.get_help() + "\n")
        sys.exit(EXIT_OK)
    if any(a in HELP_FLAGS for a in args):
        if cmd is None:
            sys.stdout.write(main_help())
        else:
            sys.stdout.write(command_help(cmd, flag_value_in(args, "workdir")))
        sys.exit(EXIT_OK)
    if not args:
        sys.stderr.write(main_help())
        sys.exit(EXIT_USER_ERROR)


# ---- flags -------------------------------------------------------------------------------------
def parse_flags(argv):
    """app.run's flags_parser: help, then absl's parsing with every error as one line."""
    _handle_help(argv)
    cmd = _command_in(argv[1:])
    config_flag = flags.FLAGS["config"]
    if hasattr(config_flag, "_sys_argv"):
        config_flag._sys_argv = list(argv)   # overrides come from this argv (main(argv) in-process)
    try:
        rest = flags.FLAGS(list(argv))
        if flags.FLAGS["config"].present and _CONFIG.value is not None:
            _CONFIG.value.keys()  # a config file that failed to load raises only when read
    except Exception as e:  # noqa: BLE001 - absl's and ml_collections' errors come as many types
        _fail(cmd, _flag_error_message(e, argv, cmd or ""))
    positional = rest[1:]
    if not positional or positional[0] not in COMMANDS:
        got = " ".join(positional) or "no command"
        hint = difflib.get_close_matches(positional[0], list(COMMANDS), 1) if positional else []
        _fail(None, f"unknown command {got!r}" + (f" (did you mean {hint[0]}?)" if hint else "") +
              f"; usage: diffjax {{{','.join(COMMANDS)}}} [flags] (diffjax --help lists them)")
    cmd = positional[0]
    if len(positional) > 1:
        _fail(cmd, f"unexpected argument(s) {' '.join(positional[1:])!r}: flags are --name=value "
                   f"(diffjax {cmd} --help lists them)")
    allowed = COMMANDS[cmd][2]
    wrong = [n for n in OUR_FLAGS if flags.FLAGS[n].present and n not in allowed]
    if wrong:
        _fail(cmd, f"{', '.join('--' + n for n in wrong)}: not a flag of diffjax {cmd} (its flags: "
                   f"{', '.join('--' + n for n in allowed)})")
    return rest


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


def cmd_train():
    from diffjax.training import preemption, trainer

    workdir = _need_workdir("train")
    if _CONFIG.value is None:
        raise CommandError("diffjax train needs --config (e.g. --config configs/digits.py)")
    summary = trainer.train(_CONFIG.value, workdir)
    print(json.dumps(_printable(summary), indent=1), flush=True)
    if summary.get("preempted"):
        sys.stderr.write(f"diffjax train: preempted at step {summary.get('step')}; rerun the same "
                         f"command to resume\n")
        sys.stderr.flush()
        sys.exit(preemption.EXIT_PREEMPTED)


# The draw settings: setting -> the flag that sets it.
_SETTING_FLAGS = {"num": _NUM, "sampler": _SAMPLER, "steps": _STEPS, "spacing": _SPACING,
                  "guidance": _GUIDANCE, "params": _PARAMS, "seed": _SEED}


def _typed() -> tuple[dict, dict]:
    names = {k: f"--{h.name}" for k, h in _SETTING_FLAGS.items()}
    return {k: h.value for k, h in _SETTING_FLAGS.items() if h.value is not None}, names


def _check_typed_numbers():
    """The numbers typed for sample / evaluate, checked before jax is even imported (an instant
    answer); the same rules as sampling.check_setting."""
    typed, names = _typed()
    for k in ("num", "steps"):
        if k in typed and typed[k] < 1:
            raise CommandError(f"{names[k]} must be a positive integer, got {typed[k]}")
    g = typed.get("guidance")
    if g is not None and not math.isfinite(g):
        raise CommandError(f"--guidance must be a finite number, got {g}")
    if g is not None and g < 0 and not _ALLOW_NEG.value:
        raise CommandError(f"--guidance {g:g} is negative, which reverses the condition (samples "
                           f"are pushed away from their class); pass --allow_negative_guidance if "
                           f"that is what you want (0 = unconditional, 1 = no guidance)")
    if _CKPT_STEP.value is not None and _CKPT_STEP.value < 0:
        raise CommandError(f"--checkpoint_step must be >= 0, got {_CKPT_STEP.value}")


def _typed_settings() -> tuple[dict, dict]:
    """The draw settings typed on the command line, checked before anything is read; and the
    flag name of each setting (for messages)."""
    _check_typed_numbers()
    typed, names = _typed()
    from diffjax.training import sampling

    for k, v in typed.items():
        sampling.check_setting(k, v, names[k])
    return typed, names


def _load_run(workdir: str, typed: dict, names: dict):
    """The run of ``workdir``; the typed settings that depend on it (parameter set, PFGM++) are
    checked against its config.json before the checkpoint is restored."""
    from diffjax.training import sampling

    config = sampling.load_config(workdir)
    for k, v in typed.items():
        sampling.check_setting(k, v, names[k], config=config)
    return sampling.load(workdir, step=_CKPT_STEP.value, config=config)


def _summary_line(cmd: str, workdir: str, st: dict, out: str | None = None) -> str:
    guidance = ("no guidance (unconditional model)" if st["guidance"] is None
                else f"guidance {st['guidance']:g}")
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
    from diffjax.training import sampling

    run = _load_run(workdir, typed, names)
    st = sampling.settings(run, "sample", names=names, **typed)
    out = _OUT.value or os.path.join(workdir, "sample.png")
    _say(_summary_line("sample", workdir, st, out))
    num = st["num"]
    x = sampling.generate(run, num, sampler=st["sampler"], steps=st["steps"],
                          guidance=1.0 if st["guidance"] is None else st["guidance"],
                          seed=st["seed"], params_name=st["params"], spacing=st["spacing"])
    ncol = run.num_classes if run.num_classes and num % run.num_classes == 0 else None
    sampling.save_grid(x, out, ncol=ncol)
    result = {"out": out, **st}
    if _NPZ.value:
        import numpy as np
        np.savez(_NPZ.value, x=x, label=sampling.default_labels(num, run.num_classes))
        result["npz"] = _NPZ.value
    print(json.dumps(result))


def cmd_evaluate():
    workdir = _need_workdir("evaluate")
    typed, names = _typed_settings()
    from diffjax.training import evaluation, sampling

    run = _load_run(workdir, typed, names)
    st = sampling.settings(run, "eval", names=names, **typed)
    _say(_summary_line("evaluate", workdir, st))
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


_RUN = {"train": cmd_train, "sample": cmd_sample, "evaluate": cmd_evaluate,
        "preflight": cmd_preflight}


def _main(argv):
    cmd = argv[1]
    logs.setup_logging(verbosity_given=flags.FLAGS["verbosity"].present or flags.FLAGS["v"].present)
    try:
        if cmd in ("sample", "evaluate"):
            _need_workdir(cmd)
            _check_typed_numbers()
        if cmd != "preflight":  # deviceless TPU executables are not worth caching on disk
            logs.skip_absent_tpu()  # no libtpu start-up noise where there is no TPU
            _init_compilation_cache()
            _init_distributed()
        _RUN[cmd]()
    except Exception as e:  # noqa: BLE001 - only the user's mistakes; the rest is re-raised
        if not isinstance(e, _user_error_types()):
            raise
        logging.debug("diffjax %s: %s", cmd, traceback.format_exc())  # shown with --verbosity=1
        _fail(cmd, _message(e))


def main(argv=None):
    """Console-script entry point (``diffjax = diffjax.cli:main``). Run from the command line (argv
    None), it first re-executes itself under jemalloc, or else glibc's huge-page tunable, where that
    helps XLA:CPU (``diffjax.runtime``; DIFFJAX_MALLOC=jemalloc|hugetlb|default picks one,
    DIFFJAX_MALLOC_TUNING=0 turns it off)."""
    logs.quiet_environment()  # before jax, tensorflow or clu is imported (they read it on import)
    argv_given = argv is not None
    argv = list(sys.argv if argv is None else argv)
    cmd = _command_in(argv[1:])
    try:
        if not argv_given:
            try:
                runtime.maybe_reexec("diffjax.cli", argv)
            except (ValueError, FileNotFoundError) as e:
                _fail(None, str(e))
        app.run(_main, argv=argv, flags_parser=parse_flags)
    except KeyboardInterrupt:
        what = ("; the last checkpoint written is intact: rerun the same command to resume from it"
                if cmd == "train" else "")
        sys.stderr.write(f"diffjax{' ' + cmd if cmd in COMMANDS else ''}: interrupted{what}\n")
        sys.stderr.flush()
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
