"""``diffjax restore`` on a tiny trained run (3 steps, 8x8 digits; shared by the module): an .npz of
images and a user's PNG are restored, the result is consistent with the measurement, and every
mistake is one line naming what is wrong."""

import re

import numpy as np
import pytest

from diffjax.cli import restore as cli_restore
from diffjax.inverse import operators
from tests.test_cli import _json, assert_error
from tests.test_cli_help import _flags_in
from tests.training.util import run_cli


@pytest.fixture(scope="module")
def workdir(tiny_digits_run):
    return tiny_digits_run


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = np.clip(rng.standard_normal((3, 8, 8, 1)) * 0.5, -1, 1).astype(np.float32)
    path = str(tmp_path_factory.mktemp("restore_in") / "x.npz")
    np.savez(path, x=x)
    return x, path


def test_the_help_lists_every_operator_and_the_restore_flags_only():
    assert cli_restore.OPERATOR_NAMES == tuple(operators.OPERATORS)
    p = run_cli("restore", "--help")
    assert p.returncode == 0 and "Forward operator: inpaint, sr, colorize, deblur." in p.stdout
    shown = _flags_in(p.stdout)
    assert {"workdir", "operator", "input", "out", "method", "strength", "steps", "sampler",
            "seed", "measured", "factor", "mask", "mask_keep", "kernel_size", "blur_std",
            "noise_std", "npz"} <= shown, shown
    assert not {"config", "num", "guidance", "topology"} & shown
    main = run_cli("--help")
    assert re.search(r"^  restore +restore images", main.stdout, re.M), main.stdout


def test_restore_an_npz_by_inpainting(workdir, images, tmp_path):
    x, path = images
    out, npz = str(tmp_path / "r.png"), str(tmp_path / "r.npz")
    p = run_cli("restore", "--workdir", workdir, "--operator", "inpaint", "--input", path,
                "--out", out, "--npz", npz, "--sampler", "euler", "--steps", "2", "--seed", "3")
    assert p.returncode == 0, p.stderr[-3000:]
    res = _json(p.stdout)
    assert res["num"] == 3 and res["operator"] == "inpaint" and res["method"] == "steer"
    assert res["sampler"] == "euler" and res["steps"] == 2 and res["checkpoint_step"] == 3
    from PIL import Image
    assert Image.open(out).size == (2 * (3 * 9 + 1), 2 * (3 * 9 + 1))   # 3 images x 3 rows
    with np.load(npz) as f:
        x_hat, y = f["x_hat"], f["y"]
    assert x_hat.shape == x.shape and y.shape == x.shape
    known = operators.make("inpaint", (8, 8, 1)).forward(np.ones((1, 8, 8, 1)))[0] > 0
    np.testing.assert_allclose(x_hat[:, known], x[:, known], atol=1e-5)   # steering keeps y
    assert abs(res["consistency"]) < 1e-4
    line = [ln for ln in p.stderr.splitlines() if ln.startswith("diffjax restore: ")]
    assert len(line) == 1 and "3 images" in line[0] and "method steer" in line[0], p.stderr[-2000:]


def test_restore_a_users_low_resolution_png_with_dps(workdir, tmp_path):
    from PIL import Image
    src = str(tmp_path / "low.png")
    Image.fromarray(np.arange(25, dtype=np.uint8).reshape(5, 5) * 10).convert("RGB").save(src)
    out, npz = str(tmp_path / "r.png"), str(tmp_path / "r.npz")
    p = run_cli("restore", "--workdir", workdir, "--operator", "sr", "--factor", "2", "--measured",
                "--input", src, "--method", "dps", "--strength", "5", "--out", out, "--npz", npz,
                "--sampler", "euler", "--steps", "2")
    assert p.returncode == 0, p.stderr[-3000:]
    assert _json(p.stdout)["strength"] == 5.0
    with np.load(npz) as f:      # RGB 5x5 -> grey, resized to the measurement's 4x4
        assert f["y"].shape == (1, 4, 4, 1) and f["x_hat"].shape == (1, 8, 8, 1)
        assert -1 <= f["y"].min() < f["y"].max() <= 1


@pytest.mark.parametrize("args, needles", [
    (["--operator", "blur"], ["unknown operator 'blur'; valid operators: inpaint, sr, colorize, "
                              "deblur"]),
    (["--operator", "sr", "--input", "/no/such.npz"], ["--input /no/such.npz: no such file"]),
    (["--operator", "sr"], ["needs --input FILE"]),
    (["--input", "x.npz"], ["needs --operator"]),
    (["--operator", "sr", "--method", "dsp", "--input", "x.npz"], ["unknown --method 'dsp'"]),
    (["--operator", "inpaint", "--factor", "2", "--input", "setup.py"],
     ["--factor is an option of --operator sr, not of inpaint"]),
])
def test_mistakes_before_loading_are_one_line(args, needles, tmp_path):
    p = run_cli("restore", "--workdir", str(tmp_path), *args)
    assert_error(p, "restore", *needles)


def test_mistakes_against_the_run_are_one_line(workdir, tmp_path):
    bad = str(tmp_path / "bad.npz")
    np.savez(bad, x=np.zeros((2, 16, 16, 1), np.float32))
    p = run_cli("restore", "--workdir", workdir, "--operator", "sr", "--input", bad)
    assert_error(p, "restore", "'x' has shape (2, 16, 16, 1)", "images are (8, 8, 1)")
    p = run_cli("restore", "--workdir", workdir, "--operator", "colorize", "--input", bad)
    assert_error(p, "restore", "'colorize' needs 3-channel", "1 channel")
    p = run_cli("restore", "--workdir", workdir, "--operator", "sr", "--factor", "3", "--input",
                bad)
    assert_error(p, "restore", "factor 3 must be a positive integer dividing the image size 8x8")
    rng = str(tmp_path / "range.npz")
    np.savez(rng, x=np.full((1, 8, 8, 1), 255.0, np.float32))
    p = run_cli("restore", "--workdir", workdir, "--operator", "sr", "--input", rng)
    assert_error(p, "restore", "values in [255, 255], expected [-1, 1]")
