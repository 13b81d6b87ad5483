"""The help of the ``diffjax`` CLI: the command list, and per command only its own flags with the
valid values (samplers, spacings, guidance methods, the parameter sets of a run) and its exit
statuses."""
from __future__ import annotations

import json
import os
import sys
import textwrap

from absl import flags

from diffjax.cli.messages import flag_value_in
from diffjax.cli.table import (COMMANDS, EXIT_OK, EXIT_STATUS, EXIT_USER_ERROR, HELP_FLAGS,
                               METAVAR, TRAIN_EXIT)


def _sampler_names() -> list[str]:
    from diffjax.core import samplers
    return sorted(samplers.SAMPLERS)


def _spacing_names() -> list[str]:
    from diffjax.core import timesteps
    return list(timesteps.SPACINGS)


def _guidance_methods() -> dict[str, str]:
    """The guidance registry, name -> its help and fields (``--guidance NAME --guidance.FIELD V``)."""
    from diffjax import guidance

    out = {}
    for name, m in sorted(guidance.METHODS.items()):
        fields = ", ".join(f"--guidance.{f} (default {d})" for f, d in m.fields)
        out[name] = m.help + (f"; fields: {fields}" if fields else "")
    return out


def _describe_guidance(value) -> str:
    try:
        from diffjax import guidance
        return guidance.describe(guidance.resolve(value))
    except ValueError:
        return str(value)


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
            head = f"  --{name} {METAVAR.get(name, 'VALUE')}"
        text = flag.help
        if name in CHOICES:
            text += " One of: " + ", ".join(CHOICES[name]()) + "."
        if flag.default not in (None, False, "") and name != "config":
            text += f" [default: {flag.default}]"
        out.append(head)
        out.append(_wrap(text, 6))
        if name == "guidance":   # the method's fields: not absl flags (they depend on the method)
            out.append("  --guidance.FIELD V")
            out.append(_wrap("Set one field of the guidance method (e.g. --guidance.scale 3); the "
                             "fields of each method are listed below. Fields not given keep the "
                             "run's default (or the method's, with --guidance NAME).", 6))
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
        lines += ["", "guidance methods (--guidance NAME, or --guidance W = classifier_free with "
                  "scale W):"]
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
                f"{_describe_guidance(defaults.get('guidance'))}.", 2))
        else:
            if run:
                lines.append(_wrap(run["error"] + ".", 2))
            lines.append(_wrap(
                "'params' (the trained weights) or one of the run's EMA averages, named from its "
                "config: decay_<d> for each d in config.ema.decays, power_<std> for each std in "
                "config.ema.power_stds (e.g. power_0.1). Add --workdir DIR to --help to list a "
                "run's sets, classes and saved checkpoint steps.", 2))
    extra = {"train": TRAIN_EXIT, "distill": TRAIN_EXIT, "preflight": " or the config does not fit (the advice says "
                                                 "what to change)"}.get(cmd, "")
    lines += ["", _wrap(EXIT_STATUS.format(extra), 0)]
    return "\n".join(lines) + "\n"


def main_help() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: diffjax COMMAND [flags]    (diffjax COMMAND --help: that command's flags)", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {what}" for name, (what, _, _) in COMMANDS.items()]
    lines += ["", _wrap(EXIT_STATUS.format("; " + TRAIN_EXIT[2:].replace(
        "preempted", "train preempted", 1)), 0)]
    return "\n".join(lines) + "\n"


def command_in(args) -> str | None:
    return next((a for a in args if a in COMMANDS or a == "help"), None)


def handle_help(argv):
    """Print the help asked for and exit 0; no command at all: the command list, exit 1."""
    args = list(argv[1:])
    cmd = command_in(args)
    if cmd == "help":   # diffjax help [COMMAND]
        rest = args[args.index("help") + 1:]
        cmd = command_in(rest)
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

