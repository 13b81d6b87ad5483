"""grain pipeline: determinism, sharding, flips, and exact resumption (in memory and via orbax)."""
import json

import numpy as np
import pytest

from diffjax.data.arrays import ArraySource
from diffjax.data.pipeline import (checkpoint_restore_args, checkpoint_save_args, make_iterator,
                                   steps_per_epoch)


def _source(n=24):
    """Example i is a 2x2 image [[i, i + 0.5], [i, i + 0.5]] with label i % 5, so batches reveal
    which examples they hold (floor of any pixel) and whether they were flipped (column order)."""
    x = np.arange(n, dtype=np.float32)[:, None, None, None] + np.array([[0.0, 0.5]] * 2)[..., None]
    return ArraySource(x, np.arange(n) % 5)


def _ids(batch):
    return np.floor(batch["x"][:, 0, 0, 0]).astype(int)


def _take(it, k):
    return [next(it) for _ in range(k)]


def _assert_same(a, b):
    assert len(a) == len(b)
    for p, q in zip(a, b):
        np.testing.assert_array_equal(p["x"], q["x"])
        np.testing.assert_array_equal(p["label"], q["label"])


def test_batches_are_deterministic_and_seeded():
    src = _source()
    a, b = _take(make_iterator(src, 4, seed=7), 12), _take(make_iterator(src, 4, seed=7), 12)
    _assert_same(a, b)
    c = _take(make_iterator(src, 4, seed=8), 12)
    assert any(not np.array_equal(_ids(p), _ids(q)) for p, q in zip(a, c))
    assert a[0]["x"].dtype == np.float32 and a[0]["x"].shape == (4, 2, 2, 1)
    assert a[0]["label"].dtype == np.int32 and a[0]["label"].shape == (4,)
    np.testing.assert_array_equal(a[0]["label"], _ids(a[0]) % 5)  # labels travel with examples


def test_each_epoch_is_a_new_permutation():
    src, per_epoch = _source(), steps_per_epoch(24, 4)
    assert per_epoch == 6
    batches = _take(make_iterator(src, 4, seed=0), 3 * per_epoch)
    epochs = [np.concatenate([_ids(b) for b in batches[e * 6:(e + 1) * 6]]) for e in range(3)]
    for ids in epochs:
        assert sorted(ids) == list(range(24))
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    ordered = np.concatenate([_ids(b) for b in _take(make_iterator(src, 4, shuffle=False), 6)])
    np.testing.assert_array_equal(ordered, np.arange(24))


def test_finite_epochs_drop_the_remainder():
    batches = list(make_iterator(_source(23), 4, seed=0, num_epochs=2))
    assert len(batches) == 2 * 5 and all(b["x"].shape[0] == 4 for b in batches)
    for epoch in (batches[:5], batches[5:]):  # 20 distinct examples of 23; 3 left out
        ids = np.concatenate([_ids(b) for b in epoch])
        assert len(set(ids.tolist())) == 20 and set(ids.tolist()) <= set(range(23))


@pytest.mark.parametrize("n", [24, 25])
def test_processes_get_disjoint_shards_that_cover_the_data(n):
    per_process = []
    for index in range(2):
        it = make_iterator(_source(n), 8, seed=3, process_index=index, process_count=2)
        batches = _take(it, steps_per_epoch(n, 8, 2))
        assert all(b["x"].shape[0] == 4 for b in batches)  # global batch 8 / 2 processes
        per_process.append(set(np.concatenate([_ids(b) for b in batches]).tolist()))
    assert per_process[0].isdisjoint(per_process[1])
    assert per_process[0] | per_process[1] == set(range(n - n % 2))
    assert len(per_process[0]) == len(per_process[1]) == n // 2


def test_flip_is_seeded_and_only_mirrors():
    src = _source()
    a, b = _take(make_iterator(src, 4, seed=1, flip=True), 12), _take(
        make_iterator(src, 4, seed=1, flip=True), 12)
    _assert_same(a, b)
    x = np.concatenate([p["x"] for p in a])
    flipped = x[:, 0, 0, 0] > x[:, 0, 1, 0]
    assert 0.25 < flipped.mean() < 0.75
    ids = np.floor(x.min(axis=(1, 2, 3))).astype(int)
    np.testing.assert_array_equal(np.sort(x[:, 0, :, 0], axis=1), ids[:, None] + [0.0, 0.5])


@pytest.mark.parametrize("k", [2, 5])  # k = 5: the restored run crosses an epoch boundary
def test_iterator_state_resumes_exactly(k):
    src, kw = _source(), dict(seed=4, flip=True, process_index=1, process_count=2)
    it = make_iterator(src, 4, **kw)  # 6 batches of 2 per epoch for this process
    _take(it, k)
    state = json.loads(json.dumps(it.get_state()))  # the state is plain JSON
    expected = _take(it, 6)
    fresh = make_iterator(src, 4, **kw)
    fresh.set_state(state)
    _assert_same(_take(fresh, 6), expected)


def test_orbax_checkpoint_round_trip(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    src = _source()
    it = make_iterator(src, 4, seed=5, flip=True)
    _take(it, 3)
    manager = ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",))
    manager.save(3, args=ocp.args.Composite(data=checkpoint_save_args(it)))
    expected = _take(it, 5)  # advancing right after save must not change what was saved
    manager.wait_until_finished()
    manager.close()

    restored_manager = ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",))
    fresh = make_iterator(src, 4, seed=5, flip=True)
    args = ocp.args.Composite(data=checkpoint_restore_args(fresh))
    restored = restored_manager.restore(restored_manager.latest_step(), args=args)
    _assert_same(_take(restored["data"], 5), expected)
    restored_manager.close()


def test_bad_batch_sizes():
    with pytest.raises(ValueError, match="divisible"):
        make_iterator(_source(), 5, process_count=2, process_index=0)
    with pytest.raises(ValueError, match="smaller than"):
        make_iterator(_source(10), 12, process_count=2, process_index=0)
    with pytest.raises(ValueError, match="process_index"):
        make_iterator(_source(), 4, process_count=2, process_index=2)
    with pytest.raises(ValueError, match="HWC"):
        make_iterator(ArraySource(np.zeros((8, 2))), 4, flip=True)
