"""The diffjax command: end-to-end smoke test on digits, and errors that name what is wrong."""
import json
import os

import pytest

from tests.training.util import run_cli

TINY = ["--config.model.model_channels=8", "--config.model.channel_mult=(1,)",
        "--config.model.num_head_channels=-1", "--config.data.resolution=8",
        "--config.batch_size=8", "--config.total_steps=3", "--config.log_every=1",
        "--config.checkpoint.every=2", "--config.sample.num=0", "--config.eval.at_end=False",
        "--config.eval.classifier_steps=20"]


def _json(stdout):
    return json.loads(stdout[stdout.index("{"):])


def assert_error(p, cmd, *needles, only_line=False) -> str:
    """``p`` failed as a user error: exit status 1, no traceback, exactly one line
    ``diffjax CMD: error: ...`` containing every needle (``only_line``: and nothing else on
    stderr). Returns that line."""
    assert p.returncode == 1, (p.returncode, p.stderr[-3000:])
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    prefix = f"diffjax {cmd}: error: " if cmd else "diffjax: error: "
    lines = [line for line in p.stderr.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, p.stderr[-3000:]
    if only_line:
        assert p.stderr.strip().splitlines() == lines, p.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.mark.slow
@pytest.mark.ci
def test_train_sample_evaluate_end_to_end(tmp_path):
    w = str(tmp_path / "run")
    p = run_cli("train", "--config", "configs/digits.py", "--workdir", w, *TINY)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = _json(p.stdout)
    assert summary["step"] == 3 and not summary["preempted"]
    assert os.path.isdir(os.path.join(w, "checkpoints", "3"))
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(w))   # TensorBoard
    assert os.path.exists(os.path.join(w, "metrics.jsonl"))

    out = str(tmp_path / "grid.png")
    p = run_cli("sample", "--workdir", w, "--num", "20", "--sampler", "dpmpp_2m", "--steps", "3",
                "--guidance", "2", "--out", out)
    assert p.returncode == 0, p.stderr[-3000:]
    assert _json(p.stdout)["checkpoint_step"] == 3
    from PIL import Image
    assert Image.open(out).size == (2 * (10 * 9 + 1), 2 * (2 * 9 + 1))  # 10 columns x 2 rows

    p = run_cli("evaluate", "--workdir", w, "--num", "20", "--sampler", "dpmpp_2m", "--steps",
                "3", "--guidance", "2")
    assert p.returncode == 0, p.stderr[-3000:]
    res = _json(p.stdout)
    assert 0.0 <= res["eval/accuracy"] <= 1.0 and res["eval/fd"] >= 0.0
    assert os.path.exists(os.path.join(w, "classifier", "params.msgpack"))   # cached
    assert os.path.exists(os.path.join(w, "eval.json"))


@pytest.mark.parametrize("override, needle", [
    ("--config.optim.lrr=1", "config.optim.lrr (did you mean config.optim.lr?)"),  # unknown key
    ("--config.batch_size=many", "--config.batch_size=many: expected an integer"),  # wrong type
    ("--config.model.model_channnels=8", "did you mean config.model.model_channels?"),
])
def test_bad_config_is_an_error_naming_the_key(tmp_path, override, needle):
    p = run_cli("train", "--config", "configs/digits.py", "--workdir", str(tmp_path), override)
    assert_error(p, "train", needle, only_line=True)   # one line, exit 1, no traceback


@pytest.mark.slow
@pytest.mark.ci
def test_bad_values_and_missing_data_are_clear_errors(tmp_path):
    p = run_cli("train", "--config", "configs/digits.py", "--workdir", str(tmp_path),
                "--config.sample.sampler=eulerr")
    assert p.returncode == 1 and "config.sample.sampler: unknown sampler 'eulerr'" in p.stderr
    p = run_cli("train", "--config", "configs/cifar10_ddpmpp.py", "--workdir", str(tmp_path),
                f"--config.data.data_dir={tmp_path}/no_such_dir")
    assert p.returncode == 1 and "'cifar10' is not prepared" in p.stderr
    assert "Traceback" not in p.stderr
    p = run_cli("sample", "--workdir", str(tmp_path / "never_trained"))
    assert p.returncode == 1 and "not a diffjax training workdir" in p.stderr
    p = run_cli("fly", "--workdir", str(tmp_path))
    assert_error(p, None, "unknown command 'fly'", "usage: diffjax")
