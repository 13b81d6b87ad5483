"""diffjax sample / evaluate on one tiny trained run (shared by the module): the settings used are
printed, run-dependent mistakes are one line, and stderr has no line a user cannot act on."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.test_cli import TINY, _json, assert_error
from tests.training.util import ROOT, env, run_cli

# Lines that used to be on every run's stderr and that no user can act on.
UNACTIONABLE = (
    "All log messages before absl::InitializeLog()",       # absl C++ preamble
    "oneDNN custom operations are on",                       # TensorFlow's port.cc, printed twice
    "Unable to initialize backend 'tpu'",                    # jax._src.xla_bridge, no TPU here
    "CheckpointManagerOptions.read_only=True",               # orbax, every read-only manager
    "Given directory is read only",
    # libtpu's C++ start-up where it is installed (the 'tpu' extra) but there is no TPU chip
    "Failed to find host bounds", "Logging before InitGoogle()", "unexpected worker hostname",
    "Source Location Trace",
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """3 steps of the 8-channel U-Net; checkpoints at steps 2 and 3."""
    w = str(tmp_path_factory.mktemp("cli_run") / "run")
    p = run_cli("train", "--config", "configs/digits.py", "--workdir", w, *TINY)
    assert p.returncode == 0, p.stderr[-3000:]
    return w, p


@pytest.fixture(scope="module")
def sampled(workdir, tmp_path_factory):
    """One `diffjax sample` with every setting typed, run as a user would: JAX_PLATFORMS unset."""
    w, _ = workdir
    out = str(tmp_path_factory.mktemp("cli_sample") / "grid.png")
    e = env()
    e.pop("JAX_PLATFORMS", None)        # JAX then tries every backend it knows, as on a laptop
    p = subprocess.run([sys.executable, "-m", "diffjax.cli", "sample", "--workdir", w, "--num", "4",
                        "--sampler", "euler", "--steps", "2", "--spacing", "uniform", "--guidance",
                        "0.5", "--params", "params", "--checkpoint_step", "2", "--seed", "7",
                        "--out", out], env=e, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return p, out


def test_sample_prints_the_settings_it_used(workdir, sampled):
    p, out = sampled
    res = _json(p.stdout)
    assert res == {"out": out, "num": 4, "sampler": "euler", "steps": 2, "spacing": "uniform",
                   "guidance": {"name": "classifier_free", "scale": 0.5}, "params": "params",
                   "seed": 7, "checkpoint_step": 2}
    assert os.path.exists(out)
    lines = [line for line in p.stderr.splitlines() if line.startswith("diffjax sample: ")]
    assert len(lines) == 1, p.stderr[-3000:]
    assert lines[0] == (f"diffjax sample: 4 samples from {workdir[0]} checkpoint step 2, params "
                        f"params, sampler euler, 2 steps (uniform spacing), guidance classifier_free 0.5, "
                        f"seed 7 "
                        f"-> {out}")


def test_no_unactionable_lines_on_stderr(workdir, sampled):
    _, train = workdir
    p, _ = sampled
    for name, stderr in (("train", train.stderr), ("sample", p.stderr)):
        for line in UNACTIONABLE:
            assert line not in stderr, (name, line, stderr[-3000:])


def test_evaluate_prints_the_settings_and_takes_opted_in_negative_guidance(workdir):
    w, _ = workdir
    p = run_cli("evaluate", "--workdir", w, "--num", "20", "--steps", "2", "--guidance", "-0.5",
                "--allow_negative_guidance")
    assert p.returncode == 0, p.stderr[-3000:]
    res = _json(p.stdout)
    # the sampler is the run's config.eval.sampler (configs/digits.py: dpmpp_2m), seed evaluate's
    want = {"num": 20, "sampler": "dpmpp_2m", "steps": 2, "spacing": "karras",
            "guidance": {"name": "classifier_free", "scale": -0.5}, "params": "power_0.1",
            "seed": 1234, "checkpoint_step": 3}
    assert {k: res[k] for k in want} == want
    assert res["eval/guidance"] == -0.5 and res["eval/steps"] == 2 and res["eval/num_samples"] == 20
    with open(os.path.join(w, "eval.json"), encoding="utf-8") as f:
        saved = json.load(f)
    assert {k: saved[k] for k in want} == want
    assert sum(line.startswith("diffjax evaluate: 20 samples from") for line in
               p.stderr.splitlines()) == 1


def test_guidance_by_name_and_field_equals_the_bare_number(workdir, tmp_path):
    """--guidance classifier_free --guidance.scale 2 is --guidance 2; --guidance none is scale 1;
    --guidance.scale alone keeps the run's method."""
    w, _ = workdir
    outs = {}
    for name, args in (("number", ["--guidance", "2"]),
                       ("named", ["--guidance", "classifier_free", "--guidance.scale=2"]),
                       ("field", ["--guidance.scale", "2"]), ("none", ["--guidance", "none"]),
                       ("one", ["--guidance", "1"])):
        npz = str(tmp_path / f"{name}.npz")
        p = run_cli("sample", "--workdir", w, "--num", "3", "--steps", "2", "--npz", npz,
                    "--out", str(tmp_path / f"{name}.png"), *args)
        assert p.returncode == 0, p.stderr[-3000:]
        outs[name] = np.load(npz)["x"]
    np.testing.assert_array_equal(outs["number"], outs["named"])
    np.testing.assert_array_equal(outs["number"], outs["field"])
    np.testing.assert_array_equal(outs["none"], outs["one"])
    assert not np.array_equal(outs["number"], outs["none"])   # (a 3-step model: close, not equal)


def test_autoguidance_by_a_run_of_itself_is_the_unguided_model(workdir, tmp_path):
    """--guidance auto with the run itself as the weak model: D0 = D1, so any scale gives what
    --guidance 1 gives (up to XLA's fusion of the two programs; tests/guidance checks the equation
    exactly); a weak workdir that is not a run is one line."""
    w, _ = workdir
    outs = {}
    for name, args in (("one", ["--guidance", "1"]),
                       ("auto", ["--guidance", "auto", "--guidance.weak_workdir", w,
                                 "--guidance.scale", "3"])):
        npz = str(tmp_path / f"{name}.npz")
        p = run_cli("sample", "--workdir", w, "--num", "3", "--steps", "2", "--npz", npz,
                    "--out", str(tmp_path / f"{name}.png"), *args)
        assert p.returncode == 0, p.stderr[-3000:]
        outs[name] = np.load(npz)["x"]
    np.testing.assert_allclose(outs["auto"], outs["one"], rtol=0, atol=1e-6)
    p = run_cli("sample", "--workdir", w, "--num", "3", "--guidance", "auto",
                f"--guidance.weak_workdir={tmp_path}", "--guidance.scale=2")
    assert_error(p, "sample", "is not a diffjax training workdir", "configs/digits_weak.py")


def test_a_checkpoint_step_that_was_not_saved_lists_those_that_were(workdir):
    p = run_cli("sample", "--workdir", workdir[0], "--num", "4", "--checkpoint_step", "7")
    assert_error(p, "sample", "no checkpoint at step 7", "the saved steps are 2, 3")


def test_pfgmpp_on_a_run_that_is_not_pfgmpp_says_how_to_train_one(workdir):
    p = run_cli("sample", "--workdir", workdir[0], "--num", "4", "--sampler", "pfgmpp")
    assert_error(p, "sample", "this run's process is 'edm'", "--config.diffusion.process=pfgmpp",
                 "--config.diffusion.process_kwargs=\"{'D': 128}\"")


def test_unknown_parameter_set_lists_the_runs(workdir):
    p = run_cli("evaluate", "--workdir", workdir[0], "--params", "ema")
    assert_error(p, "evaluate", "--params: unknown parameter set 'ema'",
                 "this run has decay_0.999, params, power_0.1")


def test_a_default_that_cannot_work_names_its_config_key(workdir):
    # TINY trains with config.sample.num=0 (no grids); sampling without --num must not draw 0
    p = run_cli("sample", "--workdir", workdir[0])
    assert_error(p, "sample", "config.sample.num of this run (the default of --num) must be a "
                              "positive integer, got 0")


def test_help_with_a_workdir_lists_the_runs_parameter_sets(workdir):
    p = run_cli("sample", "--help", "--workdir", workdir[0])
    assert p.returncode == 0, p.stderr
    text = " ".join(p.stdout.split())
    assert "params, decay_0.999, power_0.1 (default power_0.1)" in text
    assert "class-conditional, 10 classes" in text and "checkpoint steps saved: 2, 3" in text
