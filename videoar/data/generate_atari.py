"""Plays and caches the Atari episodes a config trains on, with a progress bar.

  python -m videoar.data.generate_atari --config=configs/atari_pong.py [--config.data.path=DIR]

Training generates missing episodes by itself; this does it ahead of time, e.g. once before
several runs start. Episodes already on disk are left alone.
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from videoar import errors
from videoar.data import pipeline

config_flags.DEFINE_config_file("config", None, "A config with data.source='atari'.",
                                lock_config=True)
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  config = FLAGS.config
  if config.data.source != "atari":
    raise errors.ConfigError(f"config.data.source={config.data.source!r}: this generates 'atari'")
  try:
    episodes = pipeline.make_source("atari", path=config.data.path,
                                    **config.data.options.to_dict()).recording
    episodes.generate(progress=True)
  except ValueError as e:  # an option or data.path the source refuses, as in training
    raise errors.ConfigError(f"config.data: {e}") from None
  lengths = episodes.lengths()
  print(f"{len(lengths)} episodes, {lengths.sum()} frames, actions {episodes.action_names()},"
        f" in {episodes.directory}")


if __name__ == "__main__":
  errors.run(main)
