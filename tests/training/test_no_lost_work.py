"""No run loses work or records garbage: rows survive kill -9, a resume keeps one row per step
(metrics.jsonl and TensorBoard), a non-finite loss or gradient stops the run without saving the
state, Ctrl-C checkpoints like SIGTERM, and the progress display reports steps/s and ETA."""
import io
import json
import os
import signal

import jax
import numpy as np
import pytest

from diffjax import inference
from diffjax.training import checkpoint, metrics, preemption, progress, trainer
from tests.training.util import run_python, tiny_config


def _steps(workdir, key="loss"):
    return [r["step"] for r in metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
            if key in r]


def _tb_steps(workdir, tag="loss"):
    import tensorflow as tf
    from tensorflow.core.util import event_pb2
    steps = []
    for name in sorted(os.listdir(workdir)):
        if name.startswith("events.out.tfevents"):
            for rec in tf.data.TFRecordDataset(os.path.join(workdir, name)).as_numpy_iterator():
                ev = event_pb2.Event.FromString(rec)
                steps += [ev.step for v in ev.summary.value if v.tag == tag]
    return sorted(steps)


def test_jsonl_rows_are_on_disk_before_close(tmp_path):
    w = metrics.JsonlWriter(str(tmp_path / "m.jsonl"))
    w.write_scalars(1, {"loss": 0.5})
    assert metrics.read_jsonl(str(tmp_path / "m.jsonl")) == [{"step": 1, "loss": 0.5}]
    w.close()


def test_truncate_after_drops_later_rows_torn_lines_and_events(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": s / 10}) + "\n" for s in range(1, 6))
                    + '{"step": 6, "lo')                       # torn by a kill -9
    assert metrics.truncate_after(str(tmp_path), 3) == 3
    assert [r["step"] for r in metrics.read_jsonl(str(path))] == [1, 2, 3]
    assert metrics.truncate_after(str(tmp_path), 3) == 0       # idempotent


KILL_AT_3 = """
import os, signal, sys
from diffjax.training import trainer
from tests.training.util import tiny_config
def kill(step, state, m):
    if step == 3:
        os.kill(os.getpid(), signal.SIGKILL)
trainer.train(tiny_config(total_steps=6, **{"checkpoint.async_save": False}), sys.argv[1],
              callbacks=[kill])
"""


@pytest.mark.slow
@pytest.mark.ci
def test_kill_9_keeps_rows_and_resume_writes_each_step_once(tmp_path):
    w = str(tmp_path / "run")
    p = run_python(KILL_AT_3, args=(w,))
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    assert _steps(w) == [1, 2, 3]                 # flushed as written; step 3 is past checkpoint 2
    with checkpoint.Checkpointer(os.path.join(w, "checkpoints"), read_only=True) as ckpt:
        assert ckpt.all_steps() == [2]
    summary = trainer.train(tiny_config(total_steps=6, **{"checkpoint.async_save": False}), w)
    assert summary["start_step"] == 2
    assert _steps(w) == [1, 2, 3, 4, 5, 6]        # step 3 dropped at resume, then written again
    assert _tb_steps(w) == [1, 2, 3, 4, 5, 6]     # TensorBoard: one point per step as well
    ref = str(tmp_path / "ref")
    trainer.train(tiny_config(total_steps=6, **{"checkpoint.async_save": False}), ref)
    assert [r["loss"] for r in metrics.read_jsonl(os.path.join(w, "metrics.jsonl"))] == \
        [r["loss"] for r in metrics.read_jsonl(os.path.join(ref, "metrics.jsonl"))]


def test_non_finite_metrics_are_named():
    assert trainer.non_finite({"loss": 1e22, "grad_norm": 3.0, "param_norm": 1.0}) == []
    bad = trainer.non_finite({"loss": 1e22, "grad_norm": np.inf, "param_norm": 1.0})
    assert bad == [("gradient norm", np.inf)]   # a finite loss does not hide an infinite gradient
    assert [n for n, _ in trainer.non_finite({"loss": np.nan, "grad_norm": np.nan,
                                              "param_norm": 2.0})] == ["loss", "gradient norm"]


def test_exploding_run_stops_saves_nothing_bad_and_keeps_the_good_checkpoint(tmp_path):
    w = str(tmp_path)
    trainer.train(tiny_config(total_steps=2, **{"checkpoint.every": 1, "checkpoint.keep": 1}), w)
    blow_up = tiny_config(total_steps=6, **{"checkpoint.every": 1, "checkpoint.keep": 1,
                                            "optim.lr": 1e38, "optim.schedule": "constant",
                                            "optim.warmup_steps": 0})
    with pytest.raises(trainer.NonFiniteLossError,
                       match=r"norm is inf at step 3; stopping \(nothing of this state was saved\)"
                             r"\. Last good checkpoint: .*checkpoints/2;"):
        trainer.train(blow_up, w)
    with checkpoint.Checkpointer(os.path.join(w, "checkpoints"), read_only=True) as ckpt:
        assert ckpt.all_steps() == [2]      # keep=1: a saved bad state would have rotated 2 out
    run = inference.load(w)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(run.params)))


def test_ctrl_c_checkpoints_like_sigterm(tmp_path):
    def ctrl_c_at_1(step, state, m):
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)   # a real Ctrl-C
    summary = trainer.train(tiny_config(total_steps=4), str(tmp_path), callbacks=[ctrl_c_at_1])
    assert summary["preempted"] and summary["step"] == 1
    assert summary["checkpoint"].endswith(os.path.join("checkpoints", "1"))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # restored
    with checkpoint.Checkpointer(str(tmp_path / "checkpoints"), read_only=True) as ckpt:
        assert ckpt.all_steps() == [1]


def test_second_ctrl_c_stops_at_once():
    with preemption.PreemptionGuard() as guard:
        os.kill(os.getpid(), signal.SIGINT)
        assert guard.requested()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert preemption.EXIT_PREEMPTED == 75


def test_progress_lines_have_rate_and_eta():
    out = io.StringIO()
    bar = progress.Progress(100, stream=out, log_secs=0.0)
    bar.phase("compiling the train step")
    bar.update(10)
    bar.update(50, loss=0.25)
    bar.phase("evaluation")
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "compiling the train step ..."
    assert lines[1].startswith("compiling the train step: done in ")
    assert lines[2].startswith("step 10/100 [")
    assert "50%" in lines[3] and "steps/s ETA" in lines[3] and "loss 0.25" in lines[3]
    assert lines[4] == "evaluation ..." and lines[5].startswith("evaluation: done in")


def test_trainer_reports_the_compile_phase(tmp_path, capsys):
    trainer.train(tiny_config(total_steps=2), str(tmp_path))
    err = capsys.readouterr().err
    assert "compiling the train step ..." in err and "step 2/2 [" in err
