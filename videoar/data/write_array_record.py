"""Converts any source into ArrayRecord shards that data.source=array_record reads.

  python -m videoar.data.write_array_record --config=configs/atari_pong.py --output=DIR
  python -m videoar.data.write_array_record --config=configs/bouncing_tiny.py --output=DIR \\
      --num_sequences=1000 --sequence_frames=64

A recorded source (atari, video_folder, array_record) is written whole, one sequence per
episode or file, frames as stored (uint8 pixels or float latents). A procedural source has no
end, so --num_sequences clips of --sequence_frames frames of its training stream are written.
Only what the model reads is kept: video, actions, label (and text, where a source has it).
Train on the result with --config.data.source=array_record --config.data.path=DIR.
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags
import numpy as np
import tqdm

from videoar import errors
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


def main(argv):
  del argv
  config = FLAGS.config
  source = pipeline.make_source(config.data.source, path=config.data.path,
                                **config.data.options.to_dict())
  count, items = sequences(source, config.seed, FLAGS.num_sequences, FLAGS.sequence_frames)
  written = array_record.write_sequences(
      FLAGS.output, tqdm.tqdm(items, total=count, desc=config.data.source, unit="sequence"),
      num_shards=min(FLAGS.num_shards, count))
  print(f"wrote {written} sequences of {config.data.source} to {FLAGS.output}")


if __name__ == "__main__":
  errors.run(main)
