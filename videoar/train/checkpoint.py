"""Orbax checkpoints in WORKDIR/checkpoints: the train state (parameters, EMA weights, optimizer
state), the data iterator's state and the training key, the newest restored on start.

Saves are asynchronous: save() returns once the arrays are copied off the devices, and a thread
writes them. Orbax writes each step to a temporary directory and renames it when complete, so a
crash in the middle of a save leaves the previous checkpoint intact; a checkpoint that is
complete in name but damaged (a lost file) is skipped on restore for the one before it.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import orbax.checkpoint as ocp
from absl import logging

from videoar.train import state as state_lib


@dataclasses.dataclass(frozen=True)
class Resumable:
  """What a run resumes from."""

  state: state_lib.TrainState
  data: dict  # the data iterator's state: {"step": index of the next batch, "seed": ...}
  rng: jax.Array  # the training key; step s draws from fold_in(rng, s)


class Checkpointer:

  def __init__(self, directory: str, *, keep: int):
    self.manager = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=True,
            cleanup_tmp_directories=True))

  def save(self, state: state_lib.TrainState, *, data: dict | None = None,
           rng: jax.Array | None = None) -> None:
    """Writes the train state and, for a run to resume from, the data state and the key."""
    items = dict(state=ocp.args.StandardSave(state))
    if data is not None:
      items["data"] = ocp.args.JsonSave(data)
    if rng is not None:
      items["rng"] = ocp.args.StandardSave({"key_data": jax.random.key_data(rng)})
    self.manager.save(int(state.step), args=ocp.args.Composite(**items), force=True)

  def restore_latest(self, like: state_lib.TrainState) -> state_lib.TrainState | None:
    """The train state of the newest readable checkpoint, shaped and placed like `like` (arrays
    or ShapeDtypeStructs), or None when there is none."""
    restored = self._restore_newest(state=ocp.args.StandardRestore(_abstract(like)))
    return None if restored is None else restored.state

  def restore_latest_run(self, like: state_lib.TrainState, like_rng: jax.Array) -> Resumable | None:
    """Everything the newest readable checkpoint holds, placed like `like` and `like_rng`."""
    key_data = jax.eval_shape(jax.random.key_data, like_rng)
    restored = self._restore_newest(
        state=ocp.args.StandardRestore(_abstract(like)), data=ocp.args.JsonRestore(),
        rng=ocp.args.StandardRestore({"key_data": jax.ShapeDtypeStruct(
            key_data.shape, key_data.dtype, sharding=like_rng.sharding)}))
    if restored is None:
      return None
    return Resumable(restored.state, restored.data,
                     jax.random.wrap_key_data(restored.rng["key_data"]))

  def _restore_newest(self, **items):
    """The newest checkpoint that restores; damaged newer ones are deleted, so the resumed run
    can save those steps again."""
    damaged = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
      # Orbax and TensorStore report a missing or truncated file with a range of error types.
      except (OSError, ValueError, KeyError) as error:
        logging.warning("checkpoint %d in %s is damaged, trying an older one: %s", step,
                        self.manager.directory, error)
        damaged.append(step)
        continue
      for bad in damaged:
        self.manager.delete(bad)
      return restored
    if damaged:
      raise ValueError(f"every checkpoint in {self.manager.directory} is damaged: steps {damaged}")
    return None

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _abstract(tree):
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      tree)
