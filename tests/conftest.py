import os

# Tests run on the CPU; keep XLA from grabbing every core's worth of threads per test.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_digits_run(tmp_path_factory):
    """A tiny digits run trained by the CLI (3 steps, 8x8; tests.test_cli.TINY), shared by the
    command tests that need a trained workdir (restore, search)."""
    from tests.test_cli import TINY
    from tests.training.util import run_cli

    w = str(tmp_path_factory.mktemp("tiny_digits") / "run")
    p = run_cli("train", "--config", "configs/digits.py", "--workdir", w, *TINY)
    assert p.returncode == 0, p.stderr[-3000:]
    return w
