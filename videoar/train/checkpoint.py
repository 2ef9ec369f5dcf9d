"""Orbax checkpoints in WORKDIR/checkpoints: the train state (parameters, EMA weights, optimizer
state), the data iterator's state and the training key, the newest restored on start.

Saves are asynchronous: save() returns once the arrays are copied off the devices, and a thread
writes them. Orbax writes each step to a temporary directory and renames it to
WORKDIR/checkpoints/STEP when complete, so a crash in the middle of a save leaves the previous
checkpoint intact.

Restoring tries the steps newest first. Nothing is ever deleted; what happens to a step that does
not restore depends on why:

- Its arrays' paths, shapes or dtypes (read from its metadata before any array) differ from those
  of the state asked for: the config changed, not the checkpoint. CheckpointMismatch, and nothing
  is moved.
- It is damaged: the error says that a file is missing or holds too few or wrong bytes
  (FileNotFoundError, a missing item, JSON that does not parse or decode, or a TensorStore status
  NOT_FOUND, OUT_OF_RANGE, DATA_LOSS or FAILED_PRECONDITION), and every file left in the step still
  reads to its end, so no retry would mend it. The step is moved to WORKDIR/checkpoints.damaged/STEP-TIME,
  where orbax does not look, with one logged line, and the next older step is tried. If none is
  left, CheckpointsDamaged.
- Anything else, above all an OSError other than FileNotFoundError (EIO, ESTALE, EACCES,
  ETIMEDOUT, ...), a TensorStore status such as UNAVAILABLE, DEADLINE_EXCEEDED or
  PERMISSION_DENIED, or a file that fails when read again: the fault may be the filesystem's and
  pass. CheckpointUnreadable, and nothing is moved.

Every error raised here is a CheckpointError whose message is one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import os
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from videoar.errors import UserError
from videoar.models import dit
from videoar.train import state as state_lib

# TensorStore statuses (the first word of its errors) that mean a file lost or cut short, or bytes
# that do not decode; FAILED_PRECONDITION also comes from a few errnos (ENOTCONN, EBUSY), which
# reading the files again tells apart.
_DAMAGE_STATUSES = ("NOT_FOUND:", "OUT_OF_RANGE:", "DATA_LOSS:", "FAILED_PRECONDITION:")
_ORBAX_DIR = os.path.dirname(ocp.__file__)


class CheckpointError(UserError):
  """A checkpoint directory that a run cannot go on from; the message is one line."""


class CheckpointMismatch(CheckpointError):
  """A checkpoint whose arrays differ from those of the model and optimizer now configured."""


class CheckpointUnreadable(CheckpointError):
  """A checkpoint that failed to read for a reason that may pass; nothing was moved."""


class CheckpointsDamaged(CheckpointError):
  """Every checkpoint was damaged; all were moved aside."""


@dataclasses.dataclass(frozen=True)
class Resumable:
  """What a run resumes from."""

  state: state_lib.TrainState
  data: dict  # the data iterator's state: {"step": index of the next batch, "seed": ...}
  rng: jax.Array  # the training key; step s draws from fold_in(rng, s)


class Checkpointer:
  """Saves to and restores from `directory` (WORKDIR/checkpoints), keeping the `keep` newest.

  `read_only` (sampling, evaluating, a Self Forcing stage read by another run): restores only,
  and leaves the directory's unfinished saves alone, which may be those of a run still training
  there (a writer's manager deletes them when it opens: it was the one writing them)."""

  def __init__(self, directory: str, *, keep: int, read_only: bool = False):
    self.directory = os.path.abspath(directory)
    # A reader sets no saves or retention: orbax warns when it drops them.
    saving = dict(save_interval_steps=0) if read_only else dict(max_to_keep=keep)
    options = ocp.CheckpointManagerOptions(
        **saving, create=not read_only, read_only=read_only, enable_async_checkpointing=True,
        cleanup_tmp_directories=not read_only)
    with _quiet(_READ_ONLY_NOTE if read_only else None):
      self.manager = ocp.CheckpointManager(self.directory, options=options)
    # Reads an item's tree metadata itself: the manager's metadata() turns a lost metadata file
    # into None and a warning that asks for a handler registry.
    self._metadata_reader = ocp.StandardCheckpointHandler()

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
    or ShapeDtypeStructs), or None when there is none.

    Raises the CheckpointErrors of the module docstring."""
    restored = self._restore_newest(dict(state=_abstract(like)))
    return None if restored is None else restored.state

  def restore_latest_run(self, like: state_lib.TrainState, like_rng: jax.Array) -> Resumable | None:
    """Everything the newest readable checkpoint holds, placed like `like` and `like_rng`, or
    None when there is none.

    Raises the CheckpointErrors of the module docstring."""
    key_data = jax.eval_shape(jax.random.key_data, like_rng)
    restored = self._restore_newest(
        dict(state=_abstract(like), rng={"key_data": jax.ShapeDtypeStruct(
            key_data.shape, key_data.dtype, sharding=like_rng.sharding)}),
        data=True)
    if restored is None:
      return None
    return Resumable(restored.state, restored.data,
                     jax.random.wrap_key_data(restored.rng["key_data"]))

  def _restore_newest(self, likes: dict, data: bool = False):
    """The items of the newest checkpoint that restores: `likes` maps item names to abstract
    trees, and `data` adds the JSON item "data"."""
    args = {name: ocp.args.StandardRestore(like) for name, like in likes.items()}
    if data:
      args["data"] = ocp.args.JsonRestore()
    _quiet_abandoned_reads()
    moved = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        for name, like in likes.items():
          stored = self._metadata_reader.metadata(
              epath.Path(self.directory) / str(step) / name)
          self._check_fits(step, stored.tree, like)
        return self.manager.restore(step, args=ocp.args.Composite(**args))
      except CheckpointMismatch:
        raise
      # Orbax and TensorStore report damage with many types, even a bare Exception.
      except Exception as error:  # pylint: disable=broad-exception-caught
        moved.append(self._move_aside_if_damaged(step, error))
    if moved:
      raise CheckpointsDamaged(
          f"every checkpoint in {self.directory} is damaged; moved, not deleted: "
          + ", ".join(moved))
    return None

  def _check_fits(self, step: int, stored_tree, like) -> None:
    """Raises CheckpointMismatch unless the arrays stored (orbax metadata) have the paths, shapes
    and dtypes of those in `like`. The advice to switch model.scan_layers is given only when the
    block layout is the whole difference: a checkpoint of another model in the other layout
    would only fail again after the switch. Otherwise the line names an array that differs,
    one in both with its two shapes where there is one."""
    expected = {ocp.tree.str_keypath(path): _spec(leaf)
                for path, leaf in jax.tree_util.tree_flatten_with_path(like)[0]}
    stored = {path: _spec(leaf) for path, leaf in ocp.tree.to_flat_dict(stored_tree).items()}
    if stored == expected:
      return
    layouts = _block_layout(stored), _block_layout(expected)
    other_layout = None not in layouts and layouts[0] != layouts[1]
    if other_layout:
      # Compared block by block, as neither layout's paths are in the other.
      stored, expected = _unstacked(stored), _unstacked(expected)
      if stored == expected:
        raise CheckpointMismatch(
            f"checkpoint {step} in {self.directory} holds the model's blocks {layouts[0]} and"
            f" this config builds them {layouts[1]}: set"
            f" --config.model.scan_layers={layouts[0] == 'scanned'} to read it")
    differ = [path for path in {**expected, **stored} if expected.get(path) != stored.get(path)]
    # Named by preference: an array in both, with its two shapes; across layouts one outside
    # the blocks, whose path is the same in both (a block's is block_i in one, stacked in the
    # other).
    path = min(differ, key=lambda path: (
        path not in stored or path not in expected,
        other_layout and any(name.startswith("block_") for name in path)))
    if path not in stored:
      first = f"{'/'.join(path)} is not in the checkpoint"
    elif path not in expected:
      first = f"{'/'.join(path)} is in the checkpoint but not in this config"
    else:
      first = (f"{'/'.join(path)} is {_spec_str(stored[path])} in the checkpoint,"
               f" {_spec_str(expected[path])} in this config")
    raise CheckpointMismatch(
        f"checkpoint {step} in {self.directory} was written for another model or optimizer:"
        f" {first} ({len(differ)} of {len(set(expected) | set(stored))} arrays differ);"
        " use a new --workdir, or restore the config the run was started with")

  def _move_aside_if_damaged(self, step: int, error: Exception) -> str:
    """Moves a step that failed with `error` to checkpoints.damaged if it is damaged (module
    docstring) and returns its new path; raises CheckpointUnreadable otherwise."""
    path = os.path.join(self.directory, str(step))
    reason = _describe(error)
    if _says_damaged(error):
      try:
        _read_through(path)
      except OSError as read_error:
        reason = _describe(read_error)
      else:
        return self._move_aside(step, path, reason)
    raise CheckpointUnreadable(
        f"checkpoint {step} in {self.directory} could not be read ({reason}); nothing was moved"
        f" or deleted: rerun once the filesystem reads again, or move {path} aside to go on from"
        " the step before") from error

  def _move_aside(self, step: int, path: str, reason: str) -> str:
    """Renames the damaged step at `path` to checkpoints.damaged/STEP-TIME and returns the new
    path; raises CheckpointError when the rename fails."""
    aside = os.path.join(self.directory + ".damaged",
                         f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
    if jax.process_index() == 0:
      try:
        os.makedirs(os.path.dirname(aside), exist_ok=True)
        os.rename(path, aside)
      except OSError as error:
        raise CheckpointError(
            f"checkpoint {step} in {self.directory} is damaged ({reason}) and could not be moved"
            f" to {aside}: {_describe(error)}") from error
    ocp.multihost.sync_global_processes(f"videoar_checkpoint_moved_aside_{step}")
    self.manager.reload()
    logging.warning("checkpoint %d in %s is damaged (%s): moved to %s", step, self.directory,
                    reason, aside)
    return aside

  def close(self) -> None:
    self.manager.wait_until_finished()
    # The manager cleans up unfinished temporary directories on a thread of its own, which its
    # close() does not wait for (orbax 0.12.8): a process that exits right after (an evaluation
    # that finds nothing to restore, a run refused at once) printed that thread's traceback.
    cleanup = getattr(self.manager, "_cleanup_tmp_directory_future", None)
    if cleanup is not None:
      cleanup.result()
    self.manager.close()
    self._metadata_reader.close()


# What orbax logs as a warning for every read-only manager: the choice this module made.
_READ_ONLY_NOTE = "Given directory is read only"


@contextlib.contextmanager
def _quiet(prefix: str | None):
  """Drops the absl log records that start with `prefix` (none when None) while in the block."""
  if prefix is None:
    yield
    return
  logger = logging.get_absl_logger()
  dropped = lambda record: not record.getMessage().startswith(prefix)
  logger.addFilter(dropped)
  try:
    yield
  finally:
    logger.removeFilter(dropped)


def finished_steps(directory: str) -> list[int]:
  """The steps of the finished checkpoints in `directory`, without opening orbax: a finished
  step is a directory named by its number (orbax writes into a temporary name, then renames)."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory)
                if name.isdigit() and os.path.isdir(os.path.join(directory, name)))


def _abstract(tree):
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      tree)


def _block_layout(flat: dict) -> str | None:
  """"scanned" or "unscanned": how the model's blocks are stored in a flat {path: leaf} dict of
  a train state (models/dit.py: one stacked SCANNED_BLOCKS tree, or block_0, block_1, ...);
  None when it holds no blocks."""
  names = {name for path in flat for name in path}
  if dit.SCANNED_BLOCKS in names:
    return "scanned"
  if "block_0" in names:
    return "unscanned"
  return None


def _unstacked(flat: dict) -> dict:
  """A flat {path: (shape, dtype)} of a train state with the scanned blocks' arrays split into
  the unscanned layout's block_0, block_1, ... (models/dit.py stacks them on the first axis)."""
  unstacked = {}
  for path, (shape, dtype) in flat.items():
    if dit.SCANNED_BLOCKS not in path or not shape:
      unstacked[path] = shape, dtype
      continue
    where = path.index(dit.SCANNED_BLOCKS)
    for i in range(shape[0]):
      unstacked[path[:where] + (f"block_{i}",) + path[where + 1:]] = shape[1:], dtype
  return unstacked


def _spec(leaf) -> tuple:
  """(shape, dtype) of an array, ShapeDtypeStruct or orbax ArrayMetadata."""
  return tuple(leaf.shape), np.dtype(leaf.dtype)


def _spec_str(spec: tuple) -> str:
  shape, dtype = spec
  return f"{dtype.name}{list(shape)}"


def _causes(error: BaseException) -> list[BaseException]:
  """`error` and the errors it was raised from, outermost first."""
  chain = [error]
  while chain[-1].__cause__ is not None:
    chain.append(chain[-1].__cause__)
  return chain


def _says_damaged(error: BaseException) -> bool:
  """Whether a restore's error names a missing, short or undecodable file (module docstring)."""
  chain = _causes(error)
  if any(isinstance(e, OSError) and not isinstance(e, FileNotFoundError) for e in chain):
    return False
  root = chain[-1]
  return (isinstance(root, (FileNotFoundError, KeyError, json.JSONDecodeError,
                           UnicodeDecodeError))
          or isinstance(root, ValueError) and str(root).startswith(_DAMAGE_STATUSES))


def _describe(error: BaseException) -> str:
  """The innermost cause of `error` in one line, without the spec TensorStore appends."""
  root = _causes(error)[-1]
  text = str(root).split(" [tensorstore_spec=")[0]
  return f"{type(root).__name__}: {' '.join(text.split())}"


def _read_through(directory: str) -> None:
  """Reads every file under `directory` to its end; raises the OSError of the first that fails."""

  def fail(error: OSError):
    raise error

  for root, _, files in os.walk(directory, onerror=fail):
    for name in files:
      with open(os.path.join(root, name), "rb") as f:
        while f.read(1 << 24):
          pass


def _quiet_abandoned_reads() -> None:
  """Keeps a failed restore's leftovers from printing tracebacks, for the rest of the process.

  Orbax runs a restore's reads on an event loop of its own and closes it as soon as one read
  fails; the other reads go on in TensorStore, and each, when done, calls back into the closed
  loop ("RuntimeError: Event loop is closed"), and orbax's unfinished read coroutines raise again
  when collected. Python prints both as unraisable exceptions: hundreds of tracebacks after the
  one line that says what happened. Every other unraisable exception goes to the previous hook.
  """
  previous = sys.unraisablehook
  if getattr(previous, "quiets_abandoned_reads", False):
    return

  def hook(unraisable):
    tb, obj = unraisable.exc_traceback, unraisable.object
    late_callback = (obj is None and isinstance(unraisable.exc_value, RuntimeError)
                     and tb is not None and tb.tb_frame.f_code.co_name == "call_soon_threadsafe")
    orbax_coroutine = (inspect.iscoroutine(obj)
                       and obj.cr_code.co_filename.startswith(_ORBAX_DIR))
    if not (late_callback or orbax_coroutine):
      previous(unraisable)

  hook.quiets_abandoned_reads = True
  sys.unraisablehook = hook
