"""Two local processes (jax.distributed over localhost) train, checkpoint and resume together."""
import pytest
import json
import os
import subprocess
import sys

import numpy as np

from diffjax.training import metrics
from tests.training.util import ROOT, env, free_port

TINY = ["--config.model.model_channels=8", "--config.model.channel_mult=(1,)",
        "--config.model.num_head_channels=-1", "--config.data.resolution=8",
        "--config.batch_size=8", "--config.log_every=1", "--config.checkpoint.every=2",
        "--config.sample.num=0", "--config.eval.at_end=False"]


def _launch(workdir, total_steps):
    port = free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "diffjax.cli", "train", "--config", "configs/digits.py",
         "--workdir", str(workdir), f"--config.total_steps={total_steps}", *TINY,
         f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"],
        env=env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return [json.loads(out[out.index("{"):]) for out, _ in outs]


@pytest.mark.slow
@pytest.mark.ci
def test_two_processes_train_checkpoint_and_resume(tmp_path):
    first = _launch(tmp_path, 4)
    assert [s["step"] for s in first] == [4, 4]
    assert first[0]["loss"] == first[1]["loss"]          # one global loss, seen by both
    data_dir = tmp_path / "checkpoints" / "4" / "data"
    assert sorted(f for f in os.listdir(data_dir) if f.startswith("process_")) == [
        "process_0-of-2.json", "process_1-of-2.json"]

    second = _launch(tmp_path, 6)                         # resume: both restart from step 4
    assert [s["start_step"] for s in second] == [4, 4]
    assert [s["step"] for s in second] == [6, 6]
    rows = metrics.read_jsonl(str(tmp_path / "metrics.jsonl"))   # written by process 0 only
    losses = {r["step"]: r["loss"] for r in rows if "loss" in r}
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    assert np.all(np.isfinite(list(losses.values())))


def _sample(workdir, npz, processes):
    args = ["-m", "diffjax.cli", "sample", "--workdir", str(workdir), "--num", "6", "--steps", "2",
            "--guidance", "2", "--out", str(npz) + ".png", "--npz", str(npz)]
    if processes == 1:
        p = subprocess.run([sys.executable, *args], env=env(), cwd=ROOT, capture_output=True,
                           text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        return np.load(npz)["x"]
    port = free_port()
    procs = [subprocess.Popen([sys.executable, *args, f"--coordinator_address=localhost:{port}",
                               "--num_processes=2", f"--process_id={i}"], env=env(), cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    return np.load(npz)["x"]


@pytest.mark.slow
@pytest.mark.ci
def test_two_processes_sample_what_one_process_samples(tmp_path):
    """diffjax sample over 2 processes (the batch split over both devices, the params restored on
    each) draws the samples one process draws, example by example."""
    _launch(tmp_path, 2)
    two = _sample(tmp_path, tmp_path / "two.npz", 2)
    one = _sample(tmp_path, tmp_path / "one.npz", 1)
    assert two.shape == one.shape == (6, 8, 8, 1)
    np.testing.assert_allclose(two, one, rtol=0, atol=1e-5)   # float32 round-off between batches
