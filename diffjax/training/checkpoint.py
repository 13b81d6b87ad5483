"""Checkpoints (orbax CheckpointManager) and preemption handling.

A checkpoint at step s holds two items:
    state  the TrainState pytree (params, optimizer, EMA, step, rng), written asynchronously
    data   the grain iterator's position (one JSON file per process), so the batches after a
           resume are exactly those an uninterrupted run would have seen
Restores go straight into the target shardings (abstract ShapeDtypeStructs carrying them), so a run
may resume on a different device count. ``max_to_keep`` old checkpoints are kept. A rerun with the
same workdir resumes from the latest step (big_vision's rule: preemption is ordinary).
Preemption signals are handled in ``preemption.py``.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or unreadable."""


class Checkpointer:
    """Periodic, async, keep-N checkpoints of the train state plus the data-iterator state."""

    def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True,
                 read_only: bool = False):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only,
                                               enable_async_checkpointing=async_save,
                                               read_only=read_only)
        if read_only and not os.path.isdir(self.directory):
            raise CheckpointError(f"no checkpoint directory {self.directory}; train first "
                                  f"(diffjax train --workdir ...)")
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "data"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def path(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def save(self, step: int, state: Any, data_iter: Any = None, *, force: bool = False) -> bool:
        """Start saving ``state`` (and the iterator position) at ``step``; returns immediately."""
        import grain

        items = {"state": ocp.args.StandardSave(state)}
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        return self.manager.save(int(step), args=ocp.args.Composite(**items), force=force)

    def restore(self, abstract_state: Any, data_iter: Any = None, step: int | None = None) -> Any:
        """Restore the state (into ``abstract_state``'s shardings) and, if given, the iterator."""
        import grain

        step = self.latest_step() if step is None else int(step)
        if step is None:
            raise CheckpointError(f"no checkpoint found in {self.directory}; train first "
                                  f"(diffjax train --workdir ...)")
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # orbax raises many types for truncated/corrupt/mismatched files
            raise CheckpointError(f"could not restore checkpoint {self.path(step)}: "
                                  f"{type(e).__name__}: {e}. If the run was killed while writing "
                                  f"it, delete that step directory to resume from an earlier one."
                                  ) from e
        return out["state"]

    def restore_params(self, step: int | None = None) -> tuple[Any, int]:
        """Restore the state pytree without a target (host arrays), for sampling and evaluation."""
        step = self.latest_step() if step is None else int(step)
        if step is None:
            raise CheckpointError(f"no checkpoint found in {self.directory}; train first "
                                  f"(diffjax train --workdir ...)")
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
        except Exception as e:
            raise CheckpointError(f"could not restore checkpoint {self.path(step)}: "
                                  f"{type(e).__name__}: {e}") from e
        return out["state"], step

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        """Wait for pending saves and release the manager (idempotent)."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        self.manager.wait_until_finished()
        self.manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
