"""One training run per workdir: an exclusive lock, and a resume that keeps the run's identity.

    with lock(workdir):                        # WorkdirBusy if another live `diffjax train` holds it
        changes = check_resume_config(workdir, config)   # ValueError naming keys that break the run
        ...restore...;  record_changes(workdir, changes, step)

Lock: ``workdir/train.lock`` holds the owner's pid, host and start time, and the owner keeps an
``fcntl.flock`` on it for its lifetime. The kernel drops a flock when its process dies (kill -9
included), so a lock file without a live flock is stale and is taken over with a warning. In a
multi-host run only process 0 locks (all hosts share one workdir).

Resume: the new config is compared key by key with the run's saved ``config.json``. A change to
what the checkpoints and data stream were made with (``BREAKING``: the model, the data, the
diffusion process and loss, the batch, accumulation, EMA set and seed) is refused, naming every
such key with its old and new values. Other changes (more ``total_steps``, a new learning rate,
cadences, sampling and evaluation settings, mesh and sharding: a resume on another device count
is supported) are allowed, recorded in ``workdir/config_changes.jsonl`` with the step they took
effect at, and the saved config is updated.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time

LOCK_NAME = "train.lock"
CHANGES_NAME = "config_changes.jsonl"

# Dotted prefixes whose change breaks a resumed run ("optim.accum_steps" changes the optimizer
# state's structure, "ema." its averages, "seed" would be silently ignored: the RNG and the data
# position come from the checkpoint).
BREAKING = ("model.", "data.", "diffusion.", "batch_size", "optim.accum_steps", "ema.", "seed",
            "latent.posterior")
# ...except these, which name where things are rather than what they are.
ALLOWED_INSIDE_BREAKING = ("data.data_dir",)
# Keys whose change breaks the run only between some values: turning gradient clipping on or off
# adds or removes an optimizer-state entry (another clip value is fine).
BREAKING_IF = {"optim.grad_clip": lambda old, new: (float(old or 0) > 0) != (float(new or 0) > 0)}


class WorkdirBusy(RuntimeError):
    """Another live process is training in this workdir."""


def _describe_owner(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("time", 0)))
        return f"pid {info.get('pid')} on {info.get('host')} since {since}"
    except (OSError, ValueError):
        return "another process"


@contextlib.contextmanager
def lock(workdir: str, *, enabled: bool = True):
    """Hold the workdir's training lock for the ``with`` block (see module doc)."""
    if not enabled:
        yield
        return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_NAME)
    stale = os.path.exists(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise WorkdirBusy(f"workdir {workdir} is in use by another diffjax train "
                              f"({_describe_owner(path)}); wait for it to finish, stop it, or "
                              f"use another --workdir") from None
        raise
    if stale and os.path.getsize(path) > 0:
        logging.warning("workdir %s: taking over a stale lock (%s, no longer running)", workdir,
                        _describe_owner(path))
    info = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(info).encode())
    os.fsync(fd)
    try:
        yield
    finally:
        try:
            os.ftruncate(fd, 0)
            os.remove(path)
        except OSError:
            pass
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def flatten(config) -> dict:
    """``{dotted key: JSON value}`` of a ConfigDict or nested dict (tuples become lists)."""
    tree = json.loads(config.to_json_best_effort()) if hasattr(config, "to_json_best_effort") \
        else json.loads(json.dumps(config, default=str))
    out = {}

    def walk(node, prefix):
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v
    walk(tree, "")
    return out


def is_breaking(key: str, old=None, new=None) -> bool:
    if key in BREAKING_IF:
        return BREAKING_IF[key](old, new)
    if key in ALLOWED_INSIDE_BREAKING:
        return False
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in BREAKING)


def diff(old: dict, new: dict) -> dict:
    """``{key: (old, new)}`` for keys whose value differs; keys the old config did not have (written
    before the key existed) are not changes."""
    return {k: (old[k], v) for k, v in new.items() if k in old and old[k] != v}


def check_resume_config(workdir: str, config) -> dict:
    """Compare ``config`` with the run's saved config before resuming.

    Raises ValueError naming the keys that break the run; returns the allowed changes
    (``{key: (old, new)}``; ``record_changes`` writes them down once the resume worked). A workdir
    without config.json (written by the first process-0 start) is not checked."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        old = flatten(json.load(f))
    changes = diff(old, flatten(config))
    breaking = {k: v for k, v in changes.items() if is_breaking(k, *v)}
    if breaking:
        what = "; ".join(f"config.{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(breaking.items()))
        raise ValueError(f"cannot resume {workdir} with a changed run: {what}. These define the "
                         f"checkpoints and the data stream; pass the saved values (see "
                         f"{path}) or train in a new --workdir")
    return changes


def record_changes(workdir: str, changes: dict, step: int) -> None:
    """Append the allowed changes to ``config_changes.jsonl`` with the optimizer step they take
    effect at (the caller saves the new config.json)."""
    if not changes:
        return
    with open(os.path.join(workdir, CHANGES_NAME), "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": int(step), "time": time.time(),
                            "changes": {k: list(v) for k, v in sorted(changes.items())}}) + "\n")
    logging.info("resuming with changed settings (recorded in %s): %s", CHANGES_NAME,
                 ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(changes.items())))
