"""diffjax.logs: the lines a user cannot act on are dropped, real warnings are kept, and a user's own
environment settings win. (The end-to-end check on a real run's stderr: test_cli_run.py.)"""
import logging
import subprocess
import sys

import pytest

from diffjax import logs
from tests.training.util import ROOT, env, run_python

ORBAX = "/venv/site-packages/orbax/checkpoint/checkpoint_manager.py"


def _record(level, msg, path="/somewhere/diffjax/training/trainer.py", name="absl"):
    return logging.LogRecord(name, level, path, 1, msg, None, None)


@pytest.mark.parametrize("record, kept", [
    (_record(logging.WARNING, "CheckpointManagerOptions.read_only=True, setting "
                              "save_interval_steps=0.", ORBAX), False),
    (_record(logging.WARNING, "Given directory is read only=/w/checkpoints", ORBAX), False),
    (_record(logging.INFO, "Saving checkpoint at step 2", ORBAX), False),            # INFO chatter
    (_record(logging.INFO, "reading records", "/x/grain/_src/python/data_loader.py"), False),
    (_record(logging.INFO, "Unable to initialize backend 'tpu': INTERNAL: Failed to open "
                           "libtpu.so", "/x/jax/_src/xla_bridge.py", "jax._src.xla_bridge"), False),
    # real warnings stay, from orbax too, and diffjax's own INFO lines
    (_record(logging.WARNING, "Checkpoint step 3 is incomplete; skipping", ORBAX), True),
    (_record(logging.ERROR, "Given directory is read only=/w (but this is an error)", ORBAX), True),
    (_record(logging.WARNING, "Unable to initialize backend 'cuda': driver too old",
             "/x/jax/_src/xla_bridge.py", "jax._src.xla_bridge"), True),
    (_record(logging.INFO, "model unet: 0.01M params"), True),
])
def test_filter_drops_only_the_unactionable(record, kept):
    assert logs.QuietFilter(tpu_visible=False).filter(record) is kept


def test_tpu_notice_stays_where_a_tpu_is_visible():
    rec = _record(logging.INFO, "Unable to initialize backend 'tpu': TPU in use by pid 12",
                  "/x/jax/_src/xla_bridge.py", "jax._src.xla_bridge")
    assert logs.QuietFilter(tpu_visible=True).filter(rec)


def test_quiet_environment_keeps_what_the_user_set():
    environ = {"TF_CPP_MIN_LOG_LEVEL": "0"}
    assert logs.quiet_environment(environ) == {"TF_ENABLE_ONEDNN_OPTS": "0"}
    assert environ == {"TF_CPP_MIN_LOG_LEVEL": "0", "TF_ENABLE_ONEDNN_OPTS": "0"}
    environ = {}
    logs.quiet_environment(environ)
    assert environ == {"TF_CPP_MIN_LOG_LEVEL": "1", "TF_ENABLE_ONEDNN_OPTS": "0"}


def test_cli_sets_the_environment_before_jax_or_tensorflow_is_imported():
    # importing the CLI module loads neither, so main() can still set what they read on import
    p = run_python("import sys, diffjax.cli\n"
                   "bad = [m for m in ('jax', 'tensorflow', 'clu', 'orbax') if m in sys.modules]\n"
                   "assert not bad, bad\n")
    assert p.returncode == 0, p.stderr


def test_no_libtpu_start_up_where_there_is_no_tpu():
    # JAX_PLATFORMS unset, as for a user: JAX's TPU backend fails at once instead of starting
    # libtpu (installed with the 'tpu' extra), which prints its own lines on stderr
    if logs._tpu_visible():
        pytest.skip("this machine has a TPU chip")
    e = env()
    e.pop("JAX_PLATFORMS", None)
    code = ("from diffjax import logs\n"
            "skipped = logs.skip_absent_tpu()\n"
            "import jax\n"
            "print(skipped, jax.default_backend())\n")
    p = subprocess.run([sys.executable, "-c", code], env=e, cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["True", "cpu"]
    for line in ("Failed to find host bounds", "Logging before InitGoogle()",
                 "unexpected worker hostname", "Source Location Trace"):
        assert line not in p.stderr, p.stderr
    # a user who chose the platforms keeps their choice (this test process: JAX_PLATFORMS=cpu)
    assert not logs.skip_absent_tpu()
