"""The benchmark's diffjax U-Net has the parameter count of the peer's diffusers UNet2DModel.

Three numbers must agree within 2%: diffjax's count (jax.eval_shape, nothing allocated), the count of
diffusers' UNet2DModel derived by hand from its constructor (bench.spec.diffusers_param_count), and
the count recorded from running the peer (bench.spec.PEER_PARAM_COUNT). When BENCH_PEER_PYTHON names
the peer's interpreter (a virtualenv with bench.spec.PEER_REQUIREMENTS) the recorded count is
re-measured by running diffusers; otherwise that half is skipped. Without it, the benchmark itself
stops with a one-line error naming the variable (tested here without torch).
"""
import os
import subprocess
import sys
import types

import pytest

from bench import harness, spec
from diffjax.models import count_params


def _diffjax_count():
    return count_params({"name": "unet", "input_shape": spec.IMAGE, **spec.UNET})


def test_diffjax_unet_matches_analytic_diffusers_count():
    n, ref = _diffjax_count(), spec.diffusers_param_count()
    assert abs(n - ref) / ref < 0.02, (n, ref)
    assert abs(spec.PEER_PARAM_COUNT - ref) / ref < 0.02, (spec.PEER_PARAM_COUNT, ref)


def test_analytic_count_tracks_the_architecture():
    # the hand count is a function of the config, not a constant: more blocks, more parameters
    small = spec.diffusers_param_count(layers_per_block=1)
    assert small < spec.diffusers_param_count()
    n = count_params({"name": "unet", "input_shape": spec.IMAGE, **dict(spec.UNET, num_res_blocks=1)})
    assert abs(n - small) / small < 0.02, (n, small)


@pytest.mark.skipif(not harness.peer_available(),
                    reason="no peer virtualenv (torch + diffusers) at BENCH_PEER_PYTHON")
def test_recorded_count_matches_running_the_peer():
    rec = harness.peer_oneshot(["--count-params"], timeout=300)
    assert rec["params"] == spec.PEER_PARAM_COUNT
    assert abs(_diffjax_count() - rec["params"]) / rec["params"] < 0.02


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench(module, *args, peer=None):
    env = {k: v for k, v in os.environ.items() if k != harness.PEER_ENV}
    if peer is not None:
        env[harness.PEER_ENV] = peer
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env=env)


@pytest.mark.parametrize("module", ["bench.run", "bench.train", "bench.peak"])
def test_no_peer_interpreter_is_a_one_line_error_naming_the_variable(module):
    p = _bench(module)
    assert p.returncode != 0 and "Traceback" not in p.stderr and p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert "BENCH_PEER_PYTHON is not set" in lines[0]
    for pin in spec.PEER_REQUIREMENTS + ("--make-peer-env DIR", "--no-peer", "python -m venv DIR"):
        assert pin in lines[0], (pin, lines[0])


def test_missing_peer_interpreter_is_named(tmp_path):
    p = _bench("bench.run", "--workloads", "train", peer=str(tmp_path / "nope" / "python"))
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert f"BENCH_PEER_PYTHON={tmp_path / 'nope' / 'python'} is not an executable file" in p.stderr


def test_peer_versions_are_pinned():
    assert all("==" in r for r in spec.PEER_REQUIREMENTS)
    assert {r.split("==")[0] for r in spec.PEER_REQUIREMENTS} == {"torch", "diffusers"}


def test_make_peer_env_runs_venv_then_pinned_pip(tmp_path):
    calls = []
    run = lambda argv: calls.append(argv) or types.SimpleNamespace(returncode=0)
    python = harness.make_peer_env(str(tmp_path / "peer"), run=run)
    assert python == str(tmp_path / "peer" / "bin" / "python")
    assert calls[0] == [sys.executable, "-m", "venv", str(tmp_path / "peer")]
    assert calls[1][:4] == [python, "-m", "pip", "install"]
    assert set(spec.PEER_REQUIREMENTS) <= set(calls[1]) and spec.PEER_INDEX in calls[1]
    assert calls[2][0] == python and "import torch, diffusers" in calls[2][2]
    failing = lambda argv: types.SimpleNamespace(returncode=1)
    with pytest.raises(RuntimeError, match="failed at: .* -m venv"):
        harness.make_peer_env(str(tmp_path / "peer"), run=failing)
