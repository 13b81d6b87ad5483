"""One run per workdir: the lock (live owner refused, stale lock taken over) and the resume check
(a change that breaks the run refused naming the keys; allowed changes recorded)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from diffjax.training import trainer
from diffjax.training import workdir as workdir_lib
from tests.training.util import ROOT, env, tiny_config

HOLD = """
import sys, time
from diffjax.training import workdir
with workdir.lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def _holder(path):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], env=env(), cwd=ROOT,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_a_live_owner_is_refused_and_a_dead_ones_lock_is_taken_over(tmp_path, caplog):
    p = _holder(tmp_path)
    try:
        with pytest.raises(workdir_lib.WorkdirBusy, match=rf"pid {p.pid} on .* another --workdir"):
            with workdir_lib.lock(str(tmp_path)):
                pass
        with pytest.raises(workdir_lib.WorkdirBusy):     # the trainer takes the same lock
            trainer.train(tiny_config(), str(tmp_path))
        assert not (tmp_path / "checkpoints").exists()   # and writes nothing
    finally:
        p.send_signal(signal.SIGKILL)                     # dies holding the lock: a stale file
        p.wait()
    assert (tmp_path / workdir_lib.LOCK_NAME).exists()
    with caplog.at_level("WARNING"):
        with workdir_lib.lock(str(tmp_path)):
            info = json.loads((tmp_path / workdir_lib.LOCK_NAME).read_text())
            assert info["pid"] == os.getpid()
    assert any("stale lock" in r.message for r in caplog.records)
    assert not (tmp_path / workdir_lib.LOCK_NAME).exists()  # released on exit


def test_diff_and_breaking_keys():
    old = workdir_lib.flatten(tiny_config())
    new = workdir_lib.flatten(tiny_config(**{"total_steps": 9, "model.model_channels": 16}))
    changes = workdir_lib.diff(old, new)
    assert changes["total_steps"] == (4, 9) and changes["model.model_channels"] == (8, 16)
    assert workdir_lib.is_breaking("model.model_channels")
    assert workdir_lib.is_breaking("optim.accum_steps") and workdir_lib.is_breaking("seed")
    assert not workdir_lib.is_breaking("total_steps") and not workdir_lib.is_breaking("optim.lr")
    assert not workdir_lib.is_breaking("mesh.data") and not workdir_lib.is_breaking("data.data_dir")
    assert workdir_lib.is_breaking("optim.grad_clip", 1.0, 0.0)     # adds/removes optimizer state
    assert not workdir_lib.is_breaking("optim.grad_clip", 1.0, 2.0)
    del old["optim.grad_slices"]                  # a run saved before the key existed
    assert "optim.grad_slices" not in workdir_lib.diff(old, new)


def test_resume_refuses_a_breaking_change_and_records_an_allowed_one(tmp_path):
    w = str(tmp_path)
    trainer.train(tiny_config(total_steps=2), w)
    with pytest.raises(ValueError, match=r"config\.model\.model_channels: 8 -> 16.*config\.seed: "
                                         r"0 -> 1.*new --workdir"):
        trainer.train(tiny_config(total_steps=4, seed=1, **{"model.model_channels": 16}), w)
    with pytest.raises(ValueError, match=r"config\.batch_size: 8 -> 16"):
        trainer.train(tiny_config(total_steps=4, batch_size=16), w)
    summary = trainer.train(tiny_config(total_steps=4, **{"optim.lr": 1e-3}), w)
    assert summary["start_step"] == 2 and summary["step"] == 4
    rows = [json.loads(line) for line in open(os.path.join(w, workdir_lib.CHANGES_NAME))]
    assert len(rows) == 1 and rows[0]["step"] == 2
    assert rows[0]["changes"] == {"optim.lr": [2e-3, 1e-3], "total_steps": [2, 4]}
    saved = json.load(open(os.path.join(w, "config.json")))
    assert saved["total_steps"] == 4 and saved["optim"]["lr"] == 1e-3   # the new config is saved


def test_lock_file_is_released_after_a_run_and_after_an_error(tmp_path):
    w = str(tmp_path)
    with pytest.raises(ValueError):
        trainer.train(tiny_config(**{"model.num_classes": 3}), w)   # digits have 10 classes
    assert not (tmp_path / workdir_lib.LOCK_NAME).exists()
    t = time.time()
    with workdir_lib.lock(w):
        pass
    assert time.time() - t < 5
