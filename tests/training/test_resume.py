"""Checkpoints: kill-and-resume exactness, SIGTERM, corrupt and missing checkpoints (the NaN stop:
test_no_lost_work.py)."""
import os
import signal

import jax
import numpy as np
import pytest

from diffjax import inference
from diffjax.training import checkpoint, metrics, trainer
from tests.training.util import tiny_config


def _losses(workdir):
    rows = metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _final_state(workdir):
    run = inference.load(str(workdir), params="all")
    return run.step, jax.tree.leaves(jax.device_get(run.params))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """6 steps without interruption (checkpoints at 2, 4, 6; the newest 2 kept)."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    summary = trainer.train(tiny_config(total_steps=6, **{"checkpoint.keep": 2}), str(workdir))
    assert not summary["preempted"] and summary["step"] == 6
    return workdir


def test_sigterm_then_resume_reproduces_the_uninterrupted_run(uninterrupted, tmp_path):
    config = tiny_config(total_steps=6)

    def sigterm_at_3(step, state, m):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # a real signal, caught by PreemptionGuard

    first = trainer.train(config, str(tmp_path), callbacks=[sigterm_at_3])
    assert first["preempted"] and first["step"] == 3
    with checkpoint.Checkpointer(str(tmp_path / "checkpoints"), read_only=True) as ckpt:
        assert ckpt.all_steps() == [2, 3]   # periodic save at 2, preemption save at 3
    assert os.path.exists(tmp_path / "checkpoints" / "3" / "data" / "process_0-of-1.json")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL   # handler restored

    second = trainer.train(config, str(tmp_path))     # a fresh trainer resumes from step 3
    assert second["start_step"] == 3 and second["step"] == 6
    ref, got = _losses(uninterrupted), _losses(tmp_path)
    assert sorted(got) == sorted(ref) == [1, 2, 3, 4, 5, 6]
    assert got == ref                                   # bit-for-bit equal losses
    step_a, leaves_a = _final_state(uninterrupted)
    step_b, leaves_b = _final_state(tmp_path)
    assert step_a == step_b == 6
    for a, b in zip(leaves_a, leaves_b):               # params and every EMA identical
        np.testing.assert_array_equal(a, b)


def test_keep_n_checkpoints(uninterrupted):
    with checkpoint.Checkpointer(str(uninterrupted / "checkpoints"), read_only=True) as ckpt:
        assert ckpt.all_steps() == [4, 6]


def test_corrupt_and_missing_checkpoints_give_clear_errors(uninterrupted, tmp_path):
    import shutil
    work = tmp_path / "copy"
    shutil.copytree(uninterrupted, work)
    state_dir = work / "checkpoints" / "6" / "state"
    for root, _, files in os.walk(state_dir):
        for f in files:
            if not f.startswith("_"):
                with open(os.path.join(root, f), "wb") as fh:
                    fh.write(b"garbage")
    with pytest.raises(checkpoint.CheckpointError, match=r"checkpoints/6"):
        inference.load(str(work))
    with pytest.raises(FileNotFoundError, match="not a diffjax training workdir"):
        inference.load(str(tmp_path / "nothing"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint"):
        checkpoint.Checkpointer(str(tmp_path / "empty" / "checkpoints"), read_only=True)
