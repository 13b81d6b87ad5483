"""One line for each mistake made while parsing the command line (absl's flag errors,
ml_collections' unknown config keys with their "did you mean", a missing config file, an error in
the config file's own code), and the exception types that are a user's mistake."""
from __future__ import annotations

import difflib
import os
import re
import sys
import traceback

from absl import flags

from diffjax.cli.table import COMMANDS, EXIT_USER_ERROR, OUR_FLAGS, CommandError, DoesNotFit


def fail(cmd: str | None, message: str, status: int = EXIT_USER_ERROR):
    prog = f"diffjax {cmd}" if cmd else "diffjax"
    sys.stderr.write(f"{prog}: error: {message}\n")
    sys.stderr.flush()
    sys.exit(status)


def user_error_types() -> tuple:
    """The exception types that are a user's mistake: printed as their message, no traceback.
    Types of modules not imported yet cannot have been raised and are not imported for this."""
    types = [CommandError, DoesNotFit, ValueError, OSError]
    for module, names in (("diffjax.training.checkpoint", ("CheckpointError",)),
                          ("diffjax.training.trainer", ("NonFiniteLossError",)),
                          ("diffjax.training.workdir", ("WorkdirBusy",))):
        mod = sys.modules.get(module)
        types += [getattr(mod, n) for n in names if mod is not None and hasattr(mod, n)]
    return tuple(types)


def message_of(e: BaseException) -> str:
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
    lines = [line.strip() for line in message_of(e).splitlines() if line.strip()]
    return f"cannot load config file {file!r}: {lines[-1] if lines else type(e).__name__}"


def _config_code_message(path: str | None, e: BaseException) -> str | None:
    """An exception raised by the config file's own code, as 'file line N: Type: message'."""
    file = os.path.abspath((path or "").split(":", 1)[0]) if path else None
    text = message_of(e)
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


def flag_error_message(e: BaseException, argv, cmd: str) -> str:
    """One line for anything flag parsing raised (absl's errors, ml_collections' AttributeError /
    KeyError for unknown keys, OSError for a missing config file, the config file's own errors)."""
    path = _config_arg(argv)
    text = message_of(e)
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

