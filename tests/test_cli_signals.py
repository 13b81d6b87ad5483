"""Exit statuses of a stopped diffjax: 75 when train is preempted (checkpoint saved, rerun to resume),
130 with one line and no traceback when Ctrl-C stops it at once."""
import os
import signal
import subprocess
import sys
import time

from diffjax.training import preemption
from tests.test_cli import TINY, _json
from tests.training.util import ROOT, env


def _popen(*args):
    return subprocess.Popen([sys.executable, "-m", "diffjax.cli", *args], env=env(), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, proc, timeout=300):
    t0 = time.time()
    while not predicate():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.2)


def test_sigterm_during_training_exits_75_saying_how_to_resume(tmp_path):
    w = str(tmp_path / "run")
    rows = os.path.join(w, "metrics.jsonl")
    args = [a for a in TINY if not a.startswith("--config.total_steps")]
    proc = _popen("train", "--config", "configs/digits.py", "--workdir", w, *args,
                  "--config.total_steps=100000")
    try:
        _wait_for(lambda: os.path.exists(rows) and os.path.getsize(rows) > 0, proc)   # training
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == preemption.EXIT_PREEMPTED == 75, err[-3000:]
    summary = _json(out)
    assert summary["preempted"] and summary["step"] >= 1
    assert f"diffjax train: preempted at step {summary['step']}; rerun the same command to " \
           f"resume" in err.splitlines()
    assert "Traceback" not in err
    assert os.path.isdir(os.path.join(w, "checkpoints", str(summary["step"])))   # saved there


def test_ctrl_c_stops_at_once_with_one_line_and_status_130(tmp_path):
    # a config file that takes its time: Ctrl-C arrives while the command is still starting up,
    # where nothing handles SIGINT but Python's default (KeyboardInterrupt)
    slow = tmp_path / "slow_config.py"
    slow.write_text("import sys, time\n\ndef get_config():\n"
                    "    print('loading', file=sys.stderr, flush=True)\n    time.sleep(120)\n")
    proc = _popen("train", "--config", str(slow), "--workdir", str(tmp_path / "run"))
    try:
        assert proc.stderr.readline().strip() == "loading"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    assert err.strip().splitlines() == ["diffjax train: interrupted; the last checkpoint written is "
                                        "intact: rerun the same command to resume from it"]
