"""Pre-encoded frame sequences in ArrayRecord shards: latents, actions, labels, text embeddings.

A dataset directory holds
  frames-SSSSS-of-NNNNN.array_record  one record per frame: `video` [h, w, c] (uint8 pixels or
                                      float latents) and, when present, its `actions` id and
                                      its ODE-pair `ode_states` [K + 1, h, w, c]
                                      (videoar/ode_pairs.py);
  sequences.array_record              one record per sequence: its `label` and `text` embedding
                                      [tokens, dim], when present;
  index.json                          each sequence's frame count and first frame record, and
                                      the largest `label` and `actions` id written, plus one
                                      (id_counts).
Records are a JSON header line and the raw array bytes (to_bytes, from_bytes). Frames are
records of their own so that a clip reads only its frames. write_sequences() writes this format
from any encoder; `python -m videoar.data.write_array_record` converts another source into it.
"""

import dataclasses
import functools
import json
import os
from typing import Callable, Iterable

import grain
import numpy as np

from videoar import errors, files

FRAME_KEYS = ("video", "actions", "ode_states")
SEQUENCE_KEYS = ("label", "text")
# The axes of each entry of a sequence (write_sequences): the frame keys' first is its frames.
AXES = {"video": ("T", "h", "w", "c"), "actions": ("T",),
        "ode_states": ("T", "K + 1", "h", "w", "c"), "label": (), "text": ("L", "D")}
# The keys that hold ids into an embedding of the model (CausalDiT.num_classes, num_actions).
ID_KEYS = ("label", "actions")
# One record a group: a frame is read without decompressing its neighbours.
WRITER_OPTIONS = "group_size:1"
# What index.json must hold for a dataset to be read (id_counts came later: it may be absent).
INDEX_KEYS = ("frame_shards", "lengths", "first_records")
# The advice for a dataset directory that is not as write_sequences left it.
REWRITE = "write the dataset again with python -m videoar.data.write_array_record"


def to_bytes(arrays: dict[str, np.ndarray]) -> bytes:
  """A JSON header line of each array's key, dtype and shape, then their bytes in order."""
  arrays = {key: np.asarray(value) for key, value in arrays.items()}
  header = json.dumps([[key, value.dtype.str, value.shape] for key, value in arrays.items()])
  return b"".join([header.encode(), b"\n"] + [value.tobytes() for value in arrays.values()])


def from_bytes(record: bytes) -> dict[str, np.ndarray]:
  """The arrays {key: array} of a record that to_bytes wrote, in its order, each of its
  header's dtype and shape; read-only views of `record`, not copies."""
  # Not np.load: NumPy parses .npy headers with ast.literal_eval, which CPython 3.11 can crash
  # ("AST constructor recursion depth mismatch") when prefetch threads call it at once.
  end = record.index(b"\n")
  arrays, offset = {}, end + 1
  for key, dtype, shape in json.loads(record[:end]):
    array = np.frombuffer(record, np.dtype(dtype), int(np.prod(shape)), offset).reshape(shape)
    arrays[key] = array
    offset += array.nbytes
  return arrays


def write_sequences(path: str, sequences: Iterable[dict[str, np.ndarray]], *,
                    num_shards: int = 1, finish: Callable[[], None] | None = None) -> int:
  """Writes sequences ({video [T, h, w, c], optionally actions [T], ode_states
  [T, K + 1, h, w, c], label [], text [L, D]}) to the dataset directory `path`, dealing them to
  `num_shards` frame shards in turn; returns how many were written.

  Every sequence must hold the keys of the first, and shapes a model can train on together:
  each per-frame entry (FRAME_KEYS) one frame shape ([h, w, c], [K + 1, h, w, c]) in every
  sequence and one row per frame of `video`, each per-sequence entry (SEQUENCE_KEYS) one shape
  (text padded to one L), and `video` uint8 pixels in all or float latents in all (the pipeline
  rescales uint8 only). T may differ.

  index.json, which makes the directory a dataset, is written last and whole, then `finish` is
  called to write what must be there whenever index.json is (ode_pairs.json): a SIGTERM or
  SIGINT under errors.run(main, stopped=...) waits while the two are written
  (errors.held_signals), and one before leaves shards without index.json (stopped_line).

  Raises errors.UserError, before anything is written, when `path` already holds a finished
  dataset (its index.json): a new one would overwrite it; errors.ConfigError (a ValueError)
  naming the sequence, the entry and both shapes for a sequence that breaks the rules above,
  when it comes: the shards written so far are left without index.json, which the next write
  to `path` replaces; errors.Stopped for a signal held while index.json was written, once it
  and `finish` are written.
  """
  from array_record.python import array_record_module  # only writing needs the writer

  if os.path.exists(os.path.join(path, "index.json")):
    raise errors.UserError(f"{path} already holds a dataset (index.json): write to a new folder,"
                           " or move that one away")
  os.makedirs(path, exist_ok=True)
  shard_names = [f"frames-{k:05d}-of-{num_shards:05d}.array_record" for k in range(num_shards)]
  shards = [array_record_module.ArrayRecordWriter(os.path.join(path, name), WRITER_OPTIONS)
            for name in shard_names]
  sequence_writer = array_record_module.ArrayRecordWriter(
      os.path.join(path, "sequences.array_record"), WRITER_OPTIONS)
  shard_sizes = [0] * num_shards
  placement = []  # (shard, first record in it, frames) of each sequence
  first = None  # {key: (its _shape, dtype)} of sequence 0
  largest_ids = {}
  try:
    for i, sequence in enumerate(sequences):
      unknown = set(sequence) - set(FRAME_KEYS) - set(SEQUENCE_KEYS)
      if "video" not in sequence or unknown:
        raise errors.ConfigError(f"sequence {i} has keys {sorted(sequence)}: needs video, and may"
                                 f" have only {', '.join(FRAME_KEYS[1:] + SEQUENCE_KEYS)}")
      arrays = {key: np.asarray(sequence[key]) for key in sequence}
      if first is None:
        first = {key: (_shape(key, array), array.dtype) for key, array in arrays.items()}
      elif sorted(arrays) != sorted(first):
        raise errors.ConfigError(
            f"sequence {i} has keys {sorted(arrays)}, sequence 0 had {sorted(first)}")
      _check_shapes(i, arrays, first)
      for key in ID_KEYS:
        if key in arrays:
          largest_ids[key] = max(largest_ids.get(key, 0), int(np.max(arrays[key])))
      shard = i % num_shards
      frame_arrays = {key: value for key, value in arrays.items() if key in FRAME_KEYS}
      num_frames = len(frame_arrays["video"])
      for t in range(num_frames):
        shards[shard].write(to_bytes({key: value[t] for key, value in frame_arrays.items()}))
      sequence_writer.write(to_bytes(
          {key: value for key, value in arrays.items() if key in SEQUENCE_KEYS}))
      placement.append((shard, shard_sizes[shard], num_frames))
      shard_sizes[shard] += num_frames
  finally:
    for writer in shards + [sequence_writer]:
      writer.close()
  if not placement:
    raise ValueError(f"no sequence to write to {path}")
  shard_starts = np.concatenate([[0], np.cumsum(shard_sizes)[:-1]])
  index = {
      "frame_shards": shard_names,
      "lengths": [frames for _, _, frames in placement],
      "first_records": [int(shard_starts[shard] + first) for shard, first, _ in placement],
      "id_counts": {key: largest + 1 for key, largest in largest_ids.items()},
  }
  with errors.held_signals():
    with files.replaced(os.path.join(path, "index.json")) as f:
      json.dump(index, f)
    if finish:
      finish()
  return len(placement)


def stopped_line(signame: str, path: str) -> str:
  """The line for a signal that stopped a command writing the dataset directory `path`
  (errors.run's `stopped`): what the directory holds, and what to do."""
  if os.path.exists(os.path.join(path, "index.json")):
    # The signal came while index.json was written (held_signals), or before the command had
    # looked at a `path` that already held a dataset: either way, a whole one.
    return f"stopped by {signame}: {path} holds a whole dataset (index.json), kept as it is"
  if not os.path.exists(path):
    return (f"stopped by {signame} before anything was written to {path}: rerun the same"
            " command to write it")
  return (f"stopped by {signame} part way through writing {path}; it holds no index.json, so"
          " nothing reads it as a dataset: rerun the same command to write it whole")


def _shape(key: str, array: np.ndarray) -> tuple[int, ...]:
  """The shape of entry `key` that must be the same in every sequence: a frame's of a per-frame
  entry, the whole array's of a per-sequence one."""
  return array.shape[1:] if key in FRAME_KEYS else array.shape


def _check_shapes(i: int, arrays: dict[str, np.ndarray], first: dict[str, tuple]) -> None:
  """Raises ConfigError unless sequence i's `arrays` have the axes of AXES, a row per frame of
  video in every per-frame entry, and the shapes (_shape) and kind of video (uint8 pixels or
  not) of sequence 0's (`first`: {key: (shape, dtype)}). Written, mixed shapes would fail only
  in training: in the model's first step (frames), or in batching with a line that names no
  entry (text)."""
  for key, array in arrays.items():
    if array.ndim != len(AXES[key]):
      raise errors.ConfigError(f"sequence {i}: {key} has shape {list(array.shape)}: it must be"
                               f" [{', '.join(AXES[key])}]")
    if key in FRAME_KEYS and len(array) != len(arrays["video"]):
      raise errors.ConfigError(
          f"sequence {i}: {key} has {len(array)} rows and video {len(arrays['video'])} frames:"
          " a per-frame entry has one row per frame")
    ours, theirs = _shape(key, array), first[key][0]
    if ours != theirs:
      if key in FRAME_KEYS:
        raise errors.ConfigError(
            f"sequence {i}: {key} has frames of shape {list(ours)}, sequence 0's"
            f" {list(theirs)}: a per-frame entry must have one frame shape in every sequence"
            " (the model is built for one)")
      pad = " (pad every text to one number of tokens L)" if key == "text" else ""
      raise errors.ConfigError(
          f"sequence {i}: {key} has shape {list(ours)}, sequence 0's {list(theirs)}: a"
          f" per-sequence entry must have one shape in every sequence{pad}")
  ours, theirs = arrays["video"].dtype, first["video"][1]
  if (ours == np.uint8) != (theirs == np.uint8):
    raise errors.ConfigError(
        f"sequence {i}: video is {ours}, sequence 0's {theirs}:"
        " video must be uint8 pixels in every sequence or float latents in every sequence (the"
        " pipeline rescales uint8 pixels to [-1, 1] and reads floats as they are)")


@dataclasses.dataclass(frozen=True)
class ArrayRecordLatents:
  """The sequences of the dataset directory `path` written by write_sequences()."""

  path: str

  def lengths(self) -> np.ndarray:
    return np.asarray(_index(self.path)["lengths"], np.int64)

  def id_counts(self) -> dict[str, int]:
    """{key: the largest id written + 1} of the ID_KEYS the sequences hold; {} for a directory
    written before index.json recorded them."""
    return dict(_index(self.path).get("id_counts", {}))

  def read(self, sequence: int, frames: np.ndarray) -> dict[str, np.ndarray]:
    first = _index(self.path)["first_records"][sequence]
    records = _frame_source(self.path).__getitems__([first + int(t) for t in frames])
    per_frame = [from_bytes(record) for record in records]
    clip = {key: np.stack([frame[key] for frame in per_frame]) for key in per_frame[0]}
    return clip | from_bytes(_sequence_source(self.path)[sequence])


# The data errors below are ConfigErrors: ValueErrors, which experiment.build reports as
# `config.data: ...`, and one line wherever else a command reads the dataset.
@functools.cache
def _index(path: str) -> dict:
  index_path = os.path.join(path, "index.json")
  if not os.path.exists(index_path):
    what = "does not exist" if not os.path.exists(path) else "has no index.json"
    raise errors.ConfigError(
        f"data.path={path!r} {what}: it must be a dataset written whole by python -m"
        " videoar.data.write_array_record (or, for ODE regression, python -m videoar.ode_pairs)")
  try:
    with open(index_path) as f:
      index = json.load(f)
  except ValueError as e:  # not JSON, or not text
    raise errors.ConfigError(f"{index_path} is not JSON ({e}): {REWRITE}") from None
  missing = [key for key in INDEX_KEYS if not isinstance(index, dict) or key not in index]
  if missing:
    raise errors.ConfigError(f"{index_path} has no {', '.join(missing)}: {REWRITE}")
  return index


# Readers hold open files: each process opens its own on first use.
@functools.cache
def _frame_source(path: str) -> grain.sources.ArrayRecordDataSource:
  return _data_source(path, _index(path)["frame_shards"])


@functools.cache
def _sequence_source(path: str) -> grain.sources.ArrayRecordDataSource:
  return _data_source(path, ["sequences.array_record"])


def _data_source(path: str, names: list[str]) -> grain.sources.ArrayRecordDataSource:
  """grain's source over the files NAMES of the dataset directory PATH; raises ConfigError
  naming the first that is missing or cannot be read (a truncated copy)."""
  files = [os.path.join(path, name) for name in names]
  try:
    return grain.sources.ArrayRecordDataSource(files)
  except RuntimeError:
    # grain opens them all at once, and its error for a damaged one names no file: each is
    # opened alone to find it (only here, so that a good dataset opens its files once).
    from array_record.python import array_record_module

    for file in files:
      if not os.path.isfile(file):
        raise errors.ConfigError(f"{file} is missing: data.path holds only part of the dataset;"
                                 f" copy the rest, or {REWRITE}") from None
      try:
        array_record_module.ArrayRecordReader(file).close()
      except RuntimeError as e:
        reason = str(e).splitlines()[0] if str(e) else "it ends early"
        raise errors.ConfigError(f"{file} is not a whole ArrayRecord file ({reason}): copy it"
                                 f" again, or {REWRITE}") from None
    raise
