"""diffjax sample with the clean-classifier guidance methods (elucd, gfcg) on tiny runs: the scale-0
draw is the unguided one, the fields typed are the ones used, and the wrong kind of classifier run
is one line naming what to do. (A 3-step model's D barely depends on x, so a guided draw is close
to the unguided one here; tests/guidance/test_elucd.py and test_gfcg.py test the methods' effect.)"""
import numpy as np
import pytest

from tests.test_cli import TINY, _json, assert_error
from tests.training.util import run_cli


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_guidance")
    main, clean = str(root / "main"), str(root / "clean")
    p = run_cli("train", "--config", "configs/digits.py", "--workdir", main, *TINY)
    assert p.returncode == 0, p.stderr[-3000:]
    p = run_cli("train", "--config", "configs/digits_clean_classifier.py", "--workdir", clean,
                "--config.total_steps=3", "--config.checkpoint.every=3",
                "--config.data.resolution=8", "--config.batch_size=8")
    assert p.returncode == 0, p.stderr[-3000:]
    return main, clean


def _draw(main, tmp_path, name, *args):
    npz = str(tmp_path / f"{name}.npz")
    p = run_cli("sample", "--workdir", main, "--num", "4", "--steps", "3", "--npz", npz,
                "--out", str(tmp_path / f"{name}.png"), *args)
    assert p.returncode == 0, p.stderr[-3000:]
    return np.load(npz)["x"], _json(p.stdout)["guidance"]


def test_elucd_and_gfcg_from_the_command_line(runs, tmp_path):
    main, clean = runs
    plain, _ = _draw(main, tmp_path, "plain", "--guidance", "none")
    zero, _ = _draw(main, tmp_path, "zero", "--guidance", "elucd",
                    f"--guidance.classifier_workdir={clean}", "--guidance.scale=0")
    np.testing.assert_array_equal(zero, plain)
    for name, args, used in (
            ("elucd", ["--guidance", "elucd", "--guidance.scale", "1", "--guidance.path", "noisy"],
             {"name": "elucd", "scale": 1.0, "path": "noisy"}),
            ("gfcg", ["--guidance", "gfcg", "--guidance.scale", "4", "--guidance.base", "cfg",
                      "--guidance.base_scale", "2"],
             {"name": "gfcg", "scale": 4.0, "base": "cfg", "base_scale": 2.0})):
        x, sec = _draw(main, tmp_path, name, *args, "--guidance.classifier_workdir", clean)
        assert np.all(np.isfinite(x))
        assert {k: sec[k] for k in used} == used and sec["classifier_workdir"] == clean


def test_a_diffusion_run_as_the_clean_classifier_is_refused(runs):
    main, _ = runs
    p = run_cli("sample", "--workdir", main, "--num", "2", "--steps", "2", "--guidance", "elucd",
                f"--guidance.classifier_workdir={main}", "--guidance.scale=1")
    assert_error(p, "sample", "which takes a noise level", "configs/digits_clean_classifier.py")
