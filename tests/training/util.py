"""Shared helpers for the training tests: a tiny digits config and subprocess plumbing."""
from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# XLA's persistent compilation cache, shared by the test process and its subprocesses: the tiny
# train step compiles once per machine instead of once per Trainer / CLI call.
CACHE_ENV = {
    "JAX_COMPILATION_CACHE_DIR": os.path.join(tempfile.gettempdir(),
                                              f"diffjax-test-xla-cache-{os.getuid()}"),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
}


def load_config(name: str = "digits"):
    spec = importlib.util.spec_from_file_location(f"config_{name}",
                                                  os.path.join(ROOT, "configs", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def tiny_config(**overrides):
    """configs/digits.py shrunk to seconds: 1-level 8-channel U-Net at 8x8, batch 8, no eval/samples."""
    c = load_config("digits")
    c.model.model_channels = 8
    c.model.channel_mult = (1,)          # one level: the smallest program, the fastest compile
    c.model.num_head_channels = -1
    c.data.resolution = 8
    c.batch_size = 8
    c.total_steps = 4
    c.log_every = 1
    c.optim.warmup_steps = 2
    c.checkpoint.every = 2
    c.sample.every = 0
    c.sample.num = 0
    c.eval.at_end = False
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def env(devices: int | None = None) -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
    e["JAX_PLATFORMS"] = "cpu"
    for k, v in CACHE_ENV.items():
        e.setdefault(k, v)
    if devices:
        e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    else:
        e.pop("XLA_FLAGS", None)
    return e


def run_python(code: str, devices: int | None = None, timeout: int = 600, args=()):
    return subprocess.run([sys.executable, "-c", code, *args], env=env(devices), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def run_cli(*args, timeout: int = 600, devices: int | None = None):
    return subprocess.run([sys.executable, "-m", "diffjax.cli", *args], env=env(devices), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
