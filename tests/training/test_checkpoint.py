"""Checkpointer hardening on small pytrees (no training): checksums catch damaged files, a failed
async save surfaces at ``check()`` as one line and keeps the last good checkpoint, a non-finite
state is never saved, keep >= 1, and failed orbax operations leave no asyncio tracebacks behind."""
import asyncio
import gc
import json
import logging
import os
import shutil
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.training import checkpoint
from tests.training.util import run_python

NOISE = ("Traceback", "never retrieved", "Event loop is closed", "destroyed but it is pending")


def _tree(seed=0, n=4096):
    """A TrainState-like pytree: random (incompressible) floats, an int step and a PRNG key."""
    rng = np.random.default_rng(seed)
    return {"params": {"w": jnp.asarray(rng.normal(size=(n,)), jnp.float32),
                       "b": jnp.asarray(rng.normal(size=(8,)), jnp.float32)},
            "opt": {"mu": jnp.asarray(rng.normal(size=(n,)), jnp.float32),
                    "count": jnp.int32(seed)},
            "rng": jax.random.key(seed)}


def _abstract(tree):
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def _assert_equal(a, b):
    def raw(x):
        return jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x

    a, b = jax.tree.map(raw, (a, b))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _save_steps(directory, steps, keep=3):
    with checkpoint.Checkpointer(str(directory), max_to_keep=keep) as ckpt:
        for s in steps:
            ckpt.save(s, _tree(s))


def _largest_state_file(step_dir):
    state = os.path.join(step_dir, "state")
    files = [os.path.join(r, f) for r, _, fs in os.walk(state) for f in fs]
    return max(files, key=os.path.getsize)


def test_random_bytes_in_a_state_file_are_reported_as_corrupt(tmp_path):
    _save_steps(tmp_path, [1, 2])
    victim = _largest_state_file(tmp_path / "2")           # an ocdbt data file of the arrays
    assert "/ocdbt.process_0/d/" in victim
    with open(victim, "r+b") as f:                          # orbax alone restores this silently
        f.seek(os.path.getsize(victim) // 2)
        f.write(os.urandom(64))
    rel = os.path.relpath(victim, tmp_path / "2")
    with checkpoint.Checkpointer(str(tmp_path), read_only=True) as ckpt:
        with pytest.raises(checkpoint.CorruptCheckpointError) as e:
            ckpt.restore(_abstract(_tree()))
        msg = str(e.value)
        assert "\n" not in msg and len(msg) < 400, msg
        assert f"checkpoint step 2 ({tmp_path / '2'}) is corrupt: {rel} does not match" in msg
        assert f"delete {tmp_path / '2'} to fall back to step 1" in msg
        _assert_equal(ckpt.restore(_abstract(_tree()), step=1), _tree(1))   # the earlier is fine


def test_checksums_are_written_for_every_step_and_stay_valid(tmp_path):
    with checkpoint.Checkpointer(str(tmp_path), max_to_keep=3) as ckpt:
        ckpt.save(1, _tree(1))
        ckpt.wait()
        ckpt.restore(_abstract(_tree()), step=1)             # reading does not touch the files
        ckpt.save(2, _tree(2))
        ckpt.save(3, _tree(3))
    for s in (1, 2, 3):
        with open(tmp_path / str(s) / checkpoint.CHECKSUMS) as f:
            listed = json.load(f)["files"]
        assert "state/_METADATA" in listed and any(p.startswith("state/ocdbt.") for p in listed)
        assert checkpoint.checksum_problems(str(tmp_path / str(s))) == []


def test_check_writes_checksums_in_the_background_once_the_save_finalized(tmp_path):
    ckpt = checkpoint.Checkpointer(str(tmp_path), max_to_keep=2)
    try:
        ckpt.save(1, _tree(1))
        target = tmp_path / "1" / checkpoint.CHECKSUMS
        deadline = time.time() + 60
        while not target.exists() and time.time() < deadline:   # a train loop: check() per step
            ckpt.check()
            time.sleep(0.005)
        assert target.exists(), "check() never started the checksums of a finalized save"
    finally:
        ckpt.close()
    assert checkpoint.checksum_problems(str(tmp_path / "1")) == []


def test_a_checkpoint_without_checksums_restores_with_a_warning(tmp_path, caplog):
    _save_steps(tmp_path, [5])
    os.remove(tmp_path / "5" / checkpoint.CHECKSUMS)        # an older diffjax, or killed before
    with caplog.at_level(logging.WARNING), \
            checkpoint.Checkpointer(str(tmp_path), read_only=True) as ckpt:
        _assert_equal(ckpt.restore(_abstract(_tree())), _tree(5))
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("step 5" in m and "no checksums.json" in m and "unverified" in m
               for m in warned), warned


def test_a_non_finite_state_is_never_saved(tmp_path):
    broken = _tree(2)
    broken["opt"]["mu"] = broken["opt"]["mu"].at[7].set(jnp.nan)
    broken["params"]["b"] = broken["params"]["b"].at[0].set(jnp.inf)
    with checkpoint.Checkpointer(str(tmp_path), max_to_keep=1) as ckpt:
        ckpt.save(1, _tree(1))
        with pytest.raises(checkpoint.NonFiniteStateError) as e:
            ckpt.save(2, broken)
        assert "refusing to save checkpoint step 2: NaN/Inf in ['opt']['mu'], ['params']['b']" in \
            str(e.value)
        assert f"{tmp_path / '1'} (step 1)" in str(e.value)
        ckpt.wait()
        assert ckpt.all_steps() == [1]                       # keep=1: step 1 was not rotated out
    assert checkpoint.non_finite_leaves(_tree(3)) == []      # the int step and PRNG key are skipped


@pytest.mark.parametrize("keep", [0, -1, None, 1.5])
def test_keep_below_one_is_rejected_naming_the_config_key(tmp_path, keep):
    with pytest.raises(ValueError, match=r"config\.checkpoint\.keep: must be an integer >= 1"):
        checkpoint.Checkpointer(str(tmp_path), max_to_keep=keep)
    assert not os.path.exists(tmp_path / "checkpoints")


def test_missing_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint directory"):
        checkpoint.Checkpointer(str(tmp_path / "nothing"), read_only=True)
    _save_steps(tmp_path, [2])
    with checkpoint.Checkpointer(str(tmp_path), read_only=True) as ckpt:
        with pytest.raises(checkpoint.CheckpointError, match=r"no checkpoint step 3 .*are 2$"):
            ckpt.restore(_abstract(_tree()), step=3)


def test_short_cause_drops_the_tensorstore_spec_and_keeps_the_root_cause():
    spec = '{\\"driver\\":\\"zarr\\",\\"kvstore\\":{\\"path\\":\\"/x/6/state/\\"}}'
    root = "Error decoding manifest: Encoded length (7) is less than minimum length (16)"
    err = ValueError('DATA_LOSS: Error opening "cast" driver: Error opening "zarr" driver: Error '
                     'reading "opt.mu/.zarray" in OCDBT database at local file "/x/6/state/": '
                     f'Error decoding local file "/x/6/state/manifest.ocdbt": {root} '
                     f"[tensorstore_spec='{spec}'] [tensorstore_spec[1]='{spec}']\nsecond line")
    cause = checkpoint.short_cause(err, limit=120)
    assert cause.startswith("ValueError: DATA_LOSS: ... ") and cause.endswith(root), cause
    assert len(cause) <= 120 + len("ValueError: ")
    assert "tensorstore_spec" not in cause and "second line" not in cause


def test_abandoned_asyncio_work_is_silent_while_a_checkpointer_is_open(tmp_path, caplog):
    """What orbax leaves when the first of many TensorStore operations fails: a closed loop that a
    late completion still wakes up, and futures whose exceptions nobody retrieves."""
    policy = type(asyncio.get_event_loop_policy())
    with caplog.at_level(logging.DEBUG, logger="asyncio"), \
            checkpoint.Checkpointer(str(tmp_path)):
        loop = asyncio.new_event_loop()
        late = loop.create_future()

        async def fails():
            raise ValueError("the first array failed")

        async def waits():
            return await late

        async def operation():
            await asyncio.gather(fails(), waits())

        with pytest.raises(ValueError):
            loop.run_until_complete(operation())
        loop.close()                                     # as orbax's run_sync does at once
        loop.call_soon_threadsafe(late.set_result, 1)    # TensorStore's thread, later: no error
        orphan = loop.create_future()
        orphan.set_exception(OSError("never awaited"))
        del orphan
        gc.collect()
    assert not [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]
    assert type(asyncio.get_event_loop_policy()) is policy                          # put back


_CORRUPT_RESTORES = r"""
import gc, os, sys, time
import jax, jax.numpy as jnp
from diffjax.training import checkpoint
d = sys.argv[1]
tree = {f"p{i}": jnp.full((64,), float(i)) for i in range(200)}  # many arrays read concurrently
with checkpoint.Checkpointer(d) as c:
    c.save(1, tree)
for root, _, files in os.walk(os.path.join(d, "1")):
    for f in files:
        if f == "checksums.json":
            os.remove(os.path.join(root, f))   # unverified: orbax itself meets the damage
        elif "state" in root and not f.startswith("_"):
            open(os.path.join(root, f), "wb").write(b"garbage")
sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
errors = []
for _ in range(6):   # before the fix, most runs printed hundreds of asyncio traceback lines
    try:
        with checkpoint.Checkpointer(d, read_only=True) as c:
            c.restore(abstract)
    except checkpoint.CheckpointError as e:
        errors.append(e)
time.sleep(1.0); gc.collect(); time.sleep(0.5)
print(len(errors)); print(errors[0])
"""


def test_a_failed_orbax_restore_leaves_no_asyncio_tracebacks(tmp_path):
    p = run_python(_CORRUPT_RESTORES, args=(str(tmp_path / "c"),), timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    count, message = p.stdout.strip().split("\n")
    assert count == "6"
    assert message.startswith(f"checkpoint step 1 ({tmp_path / 'c' / '1'}) is corrupt or does not "
                              f"match the state being restored ("), message   # the first failure
    assert "tensorstore_spec" not in message and len(message) < 500, message
    assert message.endswith("there is no earlier checkpoint: delete "
                            f"{tmp_path / 'c' / '1'} to start from scratch")
    for needle in NOISE:
        assert needle not in p.stderr, p.stderr[-3000:]


_FULL_DISK = r"""
import json, os, resource, signal, sys, time
import jax, jax.numpy as jnp, numpy as np
from diffjax.training import checkpoint
directory, fsize = sys.argv[1], int(sys.argv[2])
if fsize:   # no tmpfs: any file written past `fsize` bytes fails (EFBIG) in the writing thread
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
small = {"w": jnp.arange(8.0), "count": jnp.int32(1)}
big = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(1 << 20,)), jnp.float32),
       "count": jnp.int32(2)}                       # 4 MB of incompressible floats: does not fit
out = {}
ckpt = checkpoint.Checkpointer(directory, max_to_keep=1)
ckpt.save(1, small)
ckpt.wait()
ckpt.save(2, big)                                   # returns at once; the write fails later
deadline = time.time() + 120
while "check" not in out:                           # a train loop calling check() every step
    try:
        ckpt.check()
    except checkpoint.SaveFailedError as e:
        out["check"], out["check_step"], out["check_last"] = str(e), e.step, e.last_good
    if time.time() > deadline:
        out["check"] = None
    time.sleep(0.005)
out["steps"], out["entries"] = ckpt.all_steps(), sorted(os.listdir(directory))
ckpt.check(); ckpt.wait()                           # reported once: these do not raise again
ckpt.save(3, big)
try:
    ckpt.wait()
except checkpoint.SaveFailedError as e:
    out["wait"] = str(e)
ckpt.save(4, big)
try:
    ckpt.close()
except checkpoint.SaveFailedError as e:
    out["close"] = str(e)
with checkpoint.Checkpointer(directory, read_only=True) as again:
    out["steps_on_resume"] = again.all_steps()
    got = again.restore(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
        sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])), small))
    out["restored"] = bool(np.array_equal(got["w"], small["w"])) and int(got["count"]) == 1
print(json.dumps(out))
"""


@pytest.fixture
def small_disk(tmp_path):
    """(checkpoint directory, file-size limit): a 2 MB tmpfs where we may mount one (root), so the
    write fails with a real ENOSPC; elsewhere an RLIMIT_FSIZE of 1 MB in the subprocess."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    mounted = (hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("mount") and
               subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                              capture_output=True).returncode == 0)
    try:
        yield str(mnt / "checkpoints"), 0 if mounted else 1 << 20
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_failed_async_save_surfaces_at_check_and_keeps_the_last_good_checkpoint(small_disk):
    directory, fsize = small_disk
    p = run_python(_FULL_DISK, args=(directory, str(fsize)), timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    cause = "File too large" if fsize else "No space left on device"
    kept = f"the last good checkpoint is kept: {os.path.join(directory, '1')} (step 1)"
    assert out["check"] is not None, "check() never reported the failed save"
    for key, step in (("check", 2), ("wait", 3), ("close", 4)):
        msg = out[key]
        assert "\n" not in msg and len(msg) < 500, msg
        assert msg.startswith(f"saving checkpoint step {step} to {directory} failed: "), msg
        assert cause in msg and msg.endswith(kept), msg
    assert (out["check_step"], out["check_last"]) == (2, 1)
    assert out["steps"] == [1] and out["entries"] == ["1"]   # listed; no partial step 2 left
    assert out["steps_on_resume"] == [1] and out["restored"]
    for needle in NOISE:
        assert needle not in p.stderr, p.stderr[-3000:]
