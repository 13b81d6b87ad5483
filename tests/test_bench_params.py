"""The benchmark's diffjax U-Net has the parameter count of the peer's diffusers UNet2DModel.

Three numbers must agree within 2%: diffjax's count (jax.eval_shape, nothing allocated), the count of
diffusers' UNet2DModel derived by hand from its constructor (bench.spec.diffusers_param_count), and
the count recorded from running the peer (bench.spec.PEER_PARAM_COUNT). When the peer's virtualenv
exists (BENCH_PEER_PYTHON, default /work/peer-venv/bin/python) the recorded count is re-measured by
running diffusers; otherwise that half is skipped.
"""
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
