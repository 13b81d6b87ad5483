"""Every mistake on the diffjax command line is one line, exit status 1, no traceback; values typed
are used or refused. No training here: each error comes before anything is built."""
import os

import pytest

from tests.test_cli import assert_error
from tests.training.util import run_cli

DIGITS = ("--config", "configs/digits.py")


@pytest.mark.parametrize("args, needles", [
    # an unknown key, with ml_collections' suggestion on the same line
    (["--config.optim.lrr=1"], ["unknown config key config.optim.lrr",
                                "(did you mean config.optim.lr?)"]),
    (["--config.nonexistent=1"], ["unknown config key config.nonexistent", "optim"]),
    (["--config.nosuch.x=1"], ["config.nosuch.x: there is no config.nosuch"]),
    (["--config.batch_size=many"], ["--config.batch_size=many: expected an integer, got 'many'"]),
    # keys of an empty section: the error says how to set it whole (PFGM++'s D)
    (["--config.diffusion.process_kwargs.D=64"],
     ["config.diffusion.process_kwargs.D", "--config.diffusion.process_kwargs=\"{'D': VALUE}\""]),
])
def test_config_override_errors_are_one_line(tmp_path, args, needles):
    p = run_cli("train", *DIGITS, "--workdir", str(tmp_path), *args)
    line = assert_error(p, "train", *needles, only_line=True)
    assert "\\n" not in line and "Did you mean" not in line   # the suggestion rendered cleanly


def test_config_file_errors_are_one_line(tmp_path):
    p = run_cli("train", "--config", "configs/no_such.py", "--workdir", str(tmp_path))
    assert_error(p, "train", "config file 'configs/no_such.py' not found", "digits.py",
                 only_line=True)
    p = run_cli("train", "--config.batch_size=3", "--workdir", str(tmp_path))
    assert_error(p, "train", "--config.batch_size needs --config FILE before it", only_line=True)
    bad = tmp_path / "bad_config.py"
    bad.write_text("def get_config():\n    return undefined_name\n")
    p = run_cli("train", "--config", str(bad), "--workdir", str(tmp_path))
    assert_error(p, "train", f"config file {bad} line 2: NameError", only_line=True)


def test_flags_commands_and_arguments_are_checked(tmp_path):
    w = str(tmp_path / "never_trained")
    p = run_cli("sample", "--workdir", w, "--stepz", "3")
    assert_error(p, "sample", "unknown flag --stepz (did you mean --steps?)", only_line=True)
    p = run_cli("train", *DIGITS, "--workdir", w, "--steps", "3")     # sample's flag, ignored before
    assert_error(p, "train", "--steps: not a flag of diffjax train", only_line=True)
    p = run_cli("sample", "--workdir", w, "--steps", "abc")
    assert_error(p, "sample", "--steps=abc: expected an integer", only_line=True)
    p = run_cli("trian", "--workdir", w)
    assert_error(p, None, "unknown command 'trian' (did you mean train?)", "usage: diffjax",
                 only_line=True)
    p = run_cli("train", *DIGITS, "--workdir", w, "--guidance.scale", "3")
    assert_error(p, "train", "--guidance.scale: not a flag of diffjax train", only_line=True)
    p = run_cli("sample", "extra", "--workdir", w)
    assert_error(p, "sample", "unexpected argument(s) 'extra'", only_line=True)


@pytest.mark.parametrize("cmd, args, needle", [
    ("sample", ["--steps", "0"], "--steps must be a positive integer, got 0"),  # was: the default
    ("sample", ["--num", "0"], "--num must be a positive integer, got 0"),      # was: the default
    ("evaluate", ["--steps", "0"], "--steps must be a positive integer, got 0"),
    ("evaluate", ["--num", "-5"], "--num must be a positive integer, got -5"),
    ("sample", ["--guidance", "-1"], "--guidance -1 is negative, which reverses the condition"),
    ("evaluate", ["--guidance", "-0.5"], "pass --allow_negative_guidance"),
    ("sample", ["--guidance", "nan"], "--guidance must be a finite number"),
    ("sample", ["--guidance", "cfgg"], "--guidance.name: unknown guidance method 'cfgg'; the "
                                       "registered ones are auto, classifier, classifier_free"),
    ("sample", ["--guidance", "classifier_free", "--guidance.eta=1"],
     "--guidance: guidance method 'classifier_free' has no field(s) eta; its fields: "
     "--guidance.scale"),
    ("evaluate", ["--guidance.scale", "-2"], "--guidance.scale -2 is negative"),
    ("sample", ["--guidance.scale=inf"], "--guidance.scale must be a finite number"),
    ("sample", ["--guidance.scale"], "--guidance.scale needs a value"),
    ("sample", ["--sampler", "eulerr"], "--sampler: unknown sampler 'eulerr'; expected one of consistency, ddim"),
    ("evaluate", ["--spacing", "cosine"], "--spacing: unknown spacing 'cosine'; expected one of"),
    ("sample", ["--checkpoint_step", "-1"], "--checkpoint_step must be >= 0"),
])
def test_typed_values_are_refused_not_replaced(tmp_path, cmd, args, needle):
    # refused before the workdir is even read (it does not exist here)
    p = run_cli(cmd, "--workdir", str(tmp_path / "never_trained"), *args)
    assert_error(p, cmd, needle, only_line=True)


def test_errors_from_deeper_code_are_one_line(tmp_path):
    from tests.training.util import tiny_config

    p = run_cli("sample", "--workdir", str(tmp_path / "never_trained"))
    assert_error(p, "sample", "not a diffjax training workdir")           # FileNotFoundError
    half = tmp_path / "half"                   # a run killed before its first checkpoint
    os.makedirs(half)
    (half / "config.json").write_text(tiny_config().to_json_best_effort())
    (half / "run.json").write_text('{"example_shape": [8, 8, 1], "num_classes": 10}')
    p = run_cli("sample", "--workdir", str(half), "--params", "ema")
    assert_error(p, "sample", "--params: unknown parameter set 'ema'; this run has decay_0.999")
    p = run_cli("sample", "--workdir", str(half), "--num", "2")
    assert_error(p, "sample", "no checkpoint directory", "train first")     # CheckpointError
