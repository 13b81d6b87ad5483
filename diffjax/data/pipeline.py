"""The training input pipeline: grain over a random-access source, sharded, shuffled, batched.

Order of operations on ``grain.MapDataset`` (each is index arithmetic, so the whole pipeline is a
pure function of (seed, process index, step) and, without workers, its state is one integer):
    source -> drop the last len % process_count examples -> shard [process_index::process_count]
    -> shuffle (re-permuted every epoch) -> random flip -> batch (drop remainder) -> repeat
    -> to_iter_dataset (thread prefetch) [-> mp_prefetch when worker_count > 0]
Each process yields ``global_batch_size // process_count`` examples per batch as numpy
``{'x': float32, 'label': int32}``; epochs never mix inside a batch. A process keeps the same
shard every epoch (as grain's IndexSampler does); its shuffle and flip streams are seeded from
(seed, process_index). The iterator is a ``grain.DatasetIterator``: ``it.get_state()`` /
``it.set_state(state)`` resume exactly, and ``checkpoint_save_args`` / ``checkpoint_restore_args``
wrap it for an orbax CheckpointManager.
"""
from __future__ import annotations

from typing import Any

import grain
import jax
import numpy as np


def _seed(*parts: int) -> int:
    """A 32-bit seed derived from several integers (used to give each process its own stream)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _flip(example: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Mirror an HWC image left-right with probability 1/2."""
    if rng.random() < 0.5:
        return {**example, "x": np.ascontiguousarray(example["x"][:, ::-1])}
    return example


def _as_example(example: dict[str, Any]) -> dict[str, np.ndarray]:
    return {"x": np.asarray(example["x"], np.float32), "label": np.int32(example["label"])}


def make_dataset(source, global_batch_size: int, seed: int = 0, *, shuffle: bool = True,
                 flip: bool = False, num_epochs: int | None = None,
                 process_index: int | None = None, process_count: int | None = None,
                 num_threads: int = 2, prefetch: int = 4,
                 worker_count: int = 0) -> grain.IterDataset:
    """Build the pipeline of the module docstring; ``num_epochs=None`` repeats forever.

    ``process_index`` / ``process_count`` default to ``jax.process_index()`` /
    ``jax.process_count()`` (override them to simulate several hosts in one process).
    ``num_threads`` / ``prefetch`` set grain's thread read-ahead (in batches); ``worker_count > 0``
    adds multiprocessing workers (off by default). They yield the same batches, but the iterator
    state's format depends on ``worker_count``: resume with the value the state was saved with.
    """
    index = jax.process_index() if process_index is None else int(process_index)
    count = jax.process_count() if process_count is None else int(process_count)
    if not 0 <= index < count:
        raise ValueError(f"process_index must be in [0, {count}), got {index}")
    if global_batch_size % count:
        raise ValueError(f"global_batch_size {global_batch_size} is not divisible by "
                         f"process_count {count}")
    batch_size = global_batch_size // count
    if flip and np.ndim(source[0]["x"]) != 3:
        raise ValueError(f"flip needs HWC images, got examples of shape {np.shape(source[0]['x'])}")
    usable = len(source) - len(source) % count
    if usable // count < batch_size:
        raise ValueError(f"a shard of {usable // count} examples (of {len(source)}) is smaller "
                         f"than the per-process batch {batch_size}")
    ds = grain.MapDataset.source(source)[:usable][index::count]
    if shuffle:
        ds = ds.shuffle(seed=_seed(seed, 0, index))
    ds = ds.map(_as_example)
    if flip:
        ds = ds.random_map(_flip, seed=_seed(seed, 1, index))
    ds = ds.batch(batch_size, drop_remainder=True).repeat(num_epochs)
    read = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
    it_ds = ds.to_iter_dataset(read)
    if worker_count > 0:
        from absl import flags  # grain's workers read absl flags; a non-absl main never parses them
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return it_ds


def make_iterator(source, global_batch_size: int, seed: int = 0, **kwargs) -> grain.DatasetIterator:
    """``iter(make_dataset(...))``: a checkpointable iterator of batches (see ``make_dataset``)."""
    return iter(make_dataset(source, global_batch_size, seed, **kwargs))


def steps_per_epoch(num_examples: int, global_batch_size: int, process_count: int = 1) -> int:
    """Batches each process yields per epoch (matches ``make_dataset``'s drop-remainder rules)."""
    shard = (num_examples - num_examples % process_count) // process_count
    return shard // (global_batch_size // process_count)


def checkpoint_save_args(iterator: grain.DatasetIterator):
    """Orbax args that save ``iterator``'s state, e.g. ``ocp.args.Composite(data=...)``.

    Grain's handler writes one JSON file per process, named by ``jax.process_index()``.
    """
    return grain.checkpoint.CheckpointSave(iterator)


def checkpoint_restore_args(iterator: grain.DatasetIterator):
    """Orbax args restoring saved state into ``iterator`` (a fresh one from ``make_iterator``)."""
    return grain.checkpoint.CheckpointRestore(iterator)
