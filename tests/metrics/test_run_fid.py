"""``diffjax evaluate --metric fid`` on a tiny trained run with random Inception weights the test
writes: the printed FID equals the Frechet distance of statistics computed here from the run's
samples (inference.generate, EDM's seeds) and its training images; the flags' mistakes are one line
before anything loads."""
import json
import os

import numpy as np
import pytest

from tests.test_cli import assert_error
from tests.training.util import run_cli


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    from diffjax.metrics import inception
    from tests.metrics.test_fid import random_variables

    p = str(tmp_path_factory.mktemp("inception") / "random_inception.npz")
    inception.save_params(p, random_variables(3))
    return p


@pytest.mark.parametrize("args,needles", [
    (["--metric", "kid"], ["--metric 'kid'", "fd, fid"]),
    (["--metric", "fid", "--inception", "x.pth"], ["needs --ref"]),
    (["--metric", "fid", "--ref", "r.npz"], ["needs --inception"]),
    (["--ref", "r.npz"], ["--ref is for --metric fid"]),
    (["--ref_num", "10"], ["--ref_num is for --metric fid"]),
    (["--metric", "fid", "--ref", "r.txt", "--inception", "x"], ["an .npz file"]),
    (["--metric", "fid", "--ref", "r.npz", "--inception", "/nonexistent.pth"],
     ["no such file", "nothing is downloaded"]),
])
def test_fid_flag_mistakes_are_one_line(tmp_path, args, needles):
    p = run_cli("evaluate", "--workdir", str(tmp_path), *args)
    assert_error(p, "evaluate", *needles)


def test_missing_ref_suggests_write_ref(tmp_path, inception_file):
    p = run_cli("evaluate", "--workdir", str(tmp_path), "--metric", "fid", "--ref",
                str(tmp_path / "r.npz"), "--inception", inception_file)
    assert_error(p, "evaluate", "no such file", "--write_ref")


@pytest.mark.slow
@pytest.mark.ci
def test_evaluate_fid_equals_the_distance_of_independent_stats(tiny_digits_run, inception_file,
                                                               tmp_path):
    from diffjax import inference
    from diffjax.data import registry
    from diffjax.metrics import fid, inception

    w, ref = tiny_digits_run, str(tmp_path / "ref.npz")
    p = run_cli("evaluate", "--workdir", w, "--metric", "fid", "--ref", ref, "--inception",
                inception_file, "--write_ref", "--ref_num", "12", "--num", "6", "--steps", "2", "--sampler", "euler",
                timeout=1200)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(p.stdout[p.stdout.index("{"):])
    assert res["metric"] == "fid" and res["num"] == 6 and res["ref_written"]
    assert json.load(open(os.path.join(w, "eval_fid.json")))["fid"] == pytest.approx(res["fid"])
    # independently: the Inception's pool features of the same samples and of the data, in numpy
    run = inference.load(w)
    x = inference.generate(run, 6, sampler="euler", steps=2, seed=res["seed"],
                           params_name=res["params"])
    data = registry.get_source(run.config.data).x[:12]
    model = inception.InceptionV3()
    variables = inception.load_params(inception_file)

    def feats(images):
        u = np.floor(np.clip((np.asarray(images) + 1) * 127.5 + 0.5, 0, 255)) / np.float32(255)
        u = np.repeat(u, 3, axis=-1).astype(np.float32)
        return np.concatenate([np.asarray(model.apply(variables, u[i:i + 50]))
                               for i in range(0, len(u), 50)]).astype(np.float64)

    fr, fg = feats(data), feats(x)
    mu_r, sig_r = np.load(ref)["mu"], np.load(ref)["sigma"]
    np.testing.assert_allclose(mu_r, fr.mean(0), rtol=1e-4, atol=1e-5)
    want = fid.frechet_distance(fg.mean(0), np.cov(fg, rowvar=False), fr.mean(0),
                                np.cov(fr, rowvar=False))
    assert res["fid"] == pytest.approx(want, rel=1e-3)
