"""Orbax checkpoints of the train state in WORKDIR/checkpoints, newest restored on start.

Orbax writes each step to a temporary directory and renames it when complete, so a crash in the
middle of a save leaves the previous checkpoint intact."""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

from videoar.train import state as state_lib


class Checkpointer:

  def __init__(self, directory: str, *, keep: int):
    self.manager = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def save(self, state: state_lib.TrainState) -> None:
    self.manager.save(int(state.step), args=ocp.args.StandardSave(state), force=True)

  def restore_latest(self, like: state_lib.TrainState) -> state_lib.TrainState | None:
    """The newest checkpoint, shaped like `like`, or None when there is none."""
    step = self.manager.latest_step()
    if step is None:
      return None
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), like)
    return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
