"""Converts any source into ArrayRecord shards that data.source=array_record reads.

  python -m videoar.data.write_array_record --config=configs/atari_pong.py --output=DIR
  python -m videoar.data.write_array_record --config=configs/bouncing_tiny.py --output=DIR \\
      --num_sequences=1000 --sequence_frames=64

A recorded source (atari, video_folder, array_record) is written whole, one sequence per
episode or file, frames as stored (uint8 pixels or float latents). A procedural source has no
end, so --num_sequences clips of --sequence_frames frames of its training stream are written.
Only what the model reads is kept: video, actions, label (and text, where a source has it).
Train on the result with --config.data.source=array_record --config.data.path=DIR.

An --output that cannot be made a directory, one that holds a dataset already, or a data source
that cannot open (its options, data.path) is one line, `error: ...`, exit status 2, before
anything is generated or decoded. A SIGTERM or Ctrl-C is one line too, exit status 128 + the
signal (143, 130): the shards written so far stay without index.json, so nothing reads them as
a dataset, and the same command writes it whole (array_record.stopped_line).
"""

from __future__ import annotations

import contextlib
import os
import sys

from absl import flags
from ml_collections import config_flags
import numpy as np
import tqdm

from videoar import errors, files
from videoar.data import array_record, pipeline

config_flags.DEFINE_config_file("config", None, "The config whose data.source to convert.",
                                lock_config=True)
flags.DEFINE_string("output", None, "Directory to write the shards and index.json to.")
flags.DEFINE_integer("num_shards", 4, "Frame shards to deal the sequences to.", lower_bound=1)
flags.DEFINE_integer("num_sequences", None, "Clips to write from a procedural source.",
                     lower_bound=1)
flags.DEFINE_integer("sequence_frames", None, "Frames in each clip of a procedural source.",
                     lower_bound=1)
flags.mark_flags_as_required(["config", "output"])
FLAGS = flags.FLAGS

KEPT_KEYS = array_record.FRAME_KEYS + array_record.SEQUENCE_KEYS


def _kept(clip: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {key: value for key, value in clip.items() if key in KEPT_KEYS}


def sequences(source: pipeline.ClipSource, seed: int, num_sequences: int | None,
              sequence_frames: int | None):
  """(count, iterator over the sequences to write) of `source`."""
  if isinstance(source, pipeline.RecordedClips):
    recording = source.recording
    lengths = recording.lengths()
    return len(lengths), (_kept(recording.read(i, np.arange(length)))
                          for i, length in enumerate(lengths))
  if not num_sequences or not sequence_frames:
    raise errors.UserError("a procedural source needs --num_sequences and --sequence_frames")
  return num_sequences, (_kept(source.clip(seed, i, sequence_frames))
                         for i in range(num_sequences))


def _check_output(path: str) -> None:
  """Raises UserError naming --output when `path` is empty, a file or under one, or holds a
  dataset already (which write_sequences would refuse only after the source was read)."""
  if not path:
    raise errors.UserError("--output is empty: name the directory to write the shards to")
  blocking = files.blocking_file(path)
  if blocking:
    raise errors.UserError(f"--output={path}: not a directory ({blocking} is a file)")
  if os.path.exists(os.path.join(path, "index.json")):
    raise errors.UserError(f"--output={path} already holds a dataset (index.json): write to a new"
                           " folder, or move that one away")


def _make_output(path: str) -> list[str]:
  """Makes the directory `path` with the parents it lacks; returns the directories it made,
  deepest first. Raises UserError naming --output when it cannot (no permission, a read-only
  or virtual file system)."""
  made, directory = [], os.path.abspath(path)
  while not os.path.lexists(directory):
    made.append(directory)
    directory = os.path.dirname(directory)
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise errors.UserError(
        f"--output={path}: the directory cannot be made ({e.strerror or e})") from e
  return made


def _source(config) -> pipeline.ClipSource:
  """The config's data source, a bad option or data.path said as experiment.build says it (which
  this layer cannot import): ConfigError("config.data: ...")."""
  try:
    return pipeline.make_source(config.data.source, path=config.data.path,
                                **config.data.options.to_dict())
  except (ValueError, FileNotFoundError) as e:
    raise errors.ConfigError(f"config.data: {e}") from e


def main(argv):
  del argv
  config = FLAGS.config
  _check_output(FLAGS.output)
  source = _source(config)
  given = [f"--{name}" for name in ("num_sequences", "sequence_frames") if FLAGS[name].value]
  if given and isinstance(source, pipeline.RecordedClips):
    print(f"note: {' and '.join(given)} ignored: data.source={config.data.source!r} is recorded,"
          " and written whole", file=sys.stderr)
  made = _make_output(FLAGS.output)
  try:
    # A recorded source reads (atari: generates) its sequences here: data.path is checked.
    count, items = sequences(source, config.seed, FLAGS.num_sequences, FLAGS.sequence_frames)
  except (ValueError, FileNotFoundError) as e:
    _remove_empty(made)
    raise errors.ConfigError(f"config.data: {e}") from e
  except BaseException:
    _remove_empty(made)
    raise
  written = array_record.write_sequences(
      FLAGS.output, tqdm.tqdm(items, total=count, desc=config.data.source, unit="sequence"),
      num_shards=min(FLAGS.num_shards, count))
  print(f"wrote {written} sequences of {config.data.source} to {FLAGS.output}")


def _remove_empty(directories: list[str]) -> None:
  """Removes the directories this run made, deepest first, while they are empty."""
  for directory in directories:
    with contextlib.suppress(OSError):
      os.rmdir(directory)


if __name__ == "__main__":
  errors.run(main, stopped=lambda signame: array_record.stopped_line(signame, FLAGS.output))
