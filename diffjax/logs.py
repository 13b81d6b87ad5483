"""What the ``diffjax`` command prints on stderr: real warnings, and no line a user cannot act on.

    logs.quiet_environment()    # first thing in cli.main, before jax / tensorflow / clu are imported
    logs.setup_logging()        # once the flags are parsed

Silenced, each where it comes from:

- TensorFlow (imported by clu for TensorBoard files, and by TFDS) prints, once per TF library it
  loads (so twice), ``oneDNN custom operations are on. You may see slightly different numerical
  results ...`` from its C++ ``port.cc`` at import time, before and regardless of
  TF_CPP_MIN_LOG_LEVEL. ``TF_ENABLE_ONEDNN_OPTS=0`` turns those kernels off, and the notice with
  them: in diffjax TensorFlow only writes event files and reads datasets, so none of its oneDNN
  kernels ever computes anything (every number comes from JAX).
- ``TF_CPP_MIN_LOG_LEVEL=1`` drops the INFO lines of TensorFlow's and XLA's C++ logging (e.g. TF's
  "This TensorFlow binary is optimized to use available CPU instructions" notice); their warnings
  and errors still print. With no INFO line logged before absl::InitializeLog() (which nothing
  here calls), absl's preamble ``WARNING: All log messages before absl::InitializeLog() is called
  are written to STDERR`` goes too: it is printed in front of the first C++ log line only.
- JAX's ``Unable to initialize backend 'tpu': ... Failed to open libtpu.so`` is an INFO record of
  the Python logger ``jax._src.xla_bridge`` (JAX tries every backend it knows); dropped on a
  machine with no TPU chip. Where a chip is visible the line stays: there it says why JAX fell back
  to the CPU.
- libtpu's start-up lines where libtpu is installed (the 'tpu' extra, for ``diffjax preflight``)
  but the machine has no TPU chip: ``Failed to find host bounds for accelerator type: WARNING:
  could not determine TPU accelerator type``, ``WARNING: Logging before InitGoogle() is written to
  STDERR``, ``E0000 ... common_lib.cc ... INVALID_ARGUMENT: unexpected worker hostname ...`` and a
  "Source Location Trace", printed by libtpu's C++ (no environment variable quiets them) when JAX
  tries its TPU backend, which then fails ("No jellyfish device found") and JAX uses the CPU.
  ``skip_absent_tpu()`` makes JAX's TPU backend fail at once, without loading libtpu, when no TPU
  chip is visible (JAX's own check, the one that already makes it skip the metadata-server query)
  and no backend has started, unless the user chose the platforms (JAX_PLATFORMS) or forces TPU
  initialization (JAX_FORCE_TPU_INIT). JAX then uses the CPU (or GPU) as it would have anyway.
  ``preflight`` does not call it (its deviceless TPU compiles load libtpu directly).
- orbax's notices on every read-only CheckpointManager (``sample``, ``evaluate``):
  ``CheckpointManagerOptions.read_only=True, setting save_interval_steps=0`` (and
  ``max_to_keep=None``) and ``Given directory is read only=...``, WARNING records that only restate
  the options diffjax chose. Other orbax warnings stay.
- orbax's and grain's INFO chatter (their warnings and errors stay).

The two environment variables are set only when unset: a user who sets them gets their choice.
"""
from __future__ import annotations

import logging
import os
from typing import MutableMapping, Optional

# Environment for the C++ side, read when TensorFlow / jaxlib load: (name, value, why).
QUIET_ENV = (
    ("TF_CPP_MIN_LOG_LEVEL", "1", "C++ INFO lines of TensorFlow and XLA (warnings still print)"),
    ("TF_ENABLE_ONEDNN_OPTS", "0", "TensorFlow's oneDNN notice (TF computes nothing in diffjax)"),
)

# WARNING records that only restate what diffjax asked for: (path fragment, message prefix).
UNACTIONABLE = (
    ("/orbax/", "CheckpointManagerOptions.read_only=True, setting"),
    ("/orbax/", "Given directory is read only"),
)
NOISY_LIBRARIES = ("/orbax/", "/grain/")       # INFO and below dropped, warnings kept
TPU_BACKEND_NOTICE = "Unable to initialize backend 'tpu'"


def quiet_environment(environ: Optional[MutableMapping[str, str]] = None) -> dict:
    """Set ``QUIET_ENV`` in ``environ`` (default ``os.environ``) where the user has not set them;
    returns what was set. Only effective before tensorflow / jax are imported."""
    environ = os.environ if environ is None else environ
    done = {}
    for name, value, _ in QUIET_ENV:
        if name not in environ:
            environ[name] = value
            done[name] = value
    return done


def _tpu_visible() -> bool:
    """True if this machine shows a TPU chip (JAX's own check; False if it cannot tell)."""
    try:
        from jax._src import hardware_utils
        return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0
    except Exception:  # noqa: BLE001 - a private JAX helper; any failure means "cannot tell"
        return False


def skip_absent_tpu() -> bool:
    """Keep JAX from starting libtpu on a machine without a TPU chip (see the module docstring);
    True if it did. Call before anything asks JAX for devices; a no-op if backends already exist,
    the user set JAX_PLATFORMS (or jax_platforms) or JAX_FORCE_TPU_INIT, or a chip is visible."""
    if os.environ.get("JAX_PLATFORMS") or "JAX_FORCE_TPU_INIT" in os.environ:
        return False
    try:  # JAX's private registry of backend factories: any surprise means "leave it alone"
        import jax
        from jax._src import xla_bridge

        if jax.config.jax_platforms or _tpu_visible():
            return False
        import dataclasses

        def no_tpu():
            raise RuntimeError("no TPU chip on this machine (libtpu not started)")

        with xla_bridge._backend_lock:  # pylint: disable=protected-access
            factories = xla_bridge._backend_factories  # pylint: disable=protected-access
            if xla_bridge._backends or "tpu" not in factories:  # pylint: disable=protected-access
                return False
            factories["tpu"] = dataclasses.replace(factories["tpu"], factory=no_tpu)
            return True
    except Exception:  # noqa: BLE001
        return False


class QuietFilter(logging.Filter):
    """Drops the records listed in the module docstring; lets everything else through."""

    def __init__(self, tpu_visible=None):
        super().__init__()
        self._tpu_visible = tpu_visible   # None: ask JAX on the first TPU notice

    def filter(self, record: logging.LogRecord) -> bool:
        path = record.pathname.replace(os.sep, "/")
        if any(lib in path for lib in NOISY_LIBRARIES) and record.levelno < logging.WARNING:
            return False
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is not ours to judge
            return True
        if record.levelno <= logging.WARNING:
            for fragment, prefix in UNACTIONABLE:
                if fragment in path and msg.startswith(prefix):
                    return False
        if record.levelno < logging.WARNING and msg.startswith(TPU_BACKEND_NOTICE):
            if self._tpu_visible is None:
                self._tpu_visible = _tpu_visible()
            return self._tpu_visible
        return True


def _add_once(target, filt):
    if not any(isinstance(f, QuietFilter) for f in target.filters):
        target.addFilter(filt)


def setup_logging(verbosity_given: bool = False) -> QuietFilter:
    """INFO-level logs from diffjax and clu on stderr (unless the user chose a verbosity), without
    the records ``QuietFilter`` drops. Idempotent."""
    from absl import logging as absl_logging

    if not verbosity_given:
        absl_logging.set_verbosity(absl_logging.INFO)
    filt = QuietFilter()
    # On absl's handler every record passes, whichever logger it comes from (orbax and grain log
    # through absl's logger, JAX through its own); the loggers as well, for other handlers.
    _add_once(absl_logging.get_absl_handler(), filt)
    for name in ("absl", "jax._src.xla_bridge"):
        _add_once(logging.getLogger(name), filt)
    return filt
