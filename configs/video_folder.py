"""Train on your own videos: every video file under data.path, recursively, at 64x64.

  python -m videoar.main --config=configs/video_folder.py --config.data.path=DIR --workdir=DIR

The first run decodes every file once (PyAV) into DIR/.videoar_cache/, as a player shows it
(turned and mirrored as its display matrix says, anamorphic pixels stretched, frames an edit
list hides left out); files that cannot be decoded (corrupt, empty, ending early) are skipped
with a warning naming each and why, and a count. Frames are centre-cropped to a square and
resized (data.options.fit="resize" squashes the whole picture instead), at the footage's own
frame rate (data.options.stride=2 keeps every second frame). 10 % of the videos, at least one,
are held out whole for sampling and evaluation (the same ones on every run), and the others
train on all their frames. A held-out video gives one evaluation clip per 2 + 3 x 8 = 26 frames
at the stride; a folder whose held-out videos give fewer than eval.num_clips and
sample.num_videos clips is an error before training, naming what to change.

Class labels: put each class's videos in its own subfolder, set data.options.labels=True and
model.num_classes to the number of subfolders; labels are the subfolder names in sorted order.

Model: configs/bouncing_tiny.py's causal DiT (width 128, depth 4, 8x8 patches) on 8 frames.

Variants (`--config=configs/video_folder.py:VARIANT`):
  test   a few steps of a tiny model, for the test suite and smoke runs.
"""

import ml_collections

from videoar import base_config


def get_config(variant: str = ""):
  config = base_config.get_config()
  config.data.source = "video_folder"
  config.data.options = ml_collections.ConfigDict(dict(
      size=64, fit="crop", labels=False, stride=1, eval_fraction=0.1))
  config.data.batch_size = 8
  if base_config.variants(variant, ("test",)):
    base_config.tiny(config)
    config.data.options.eval_fraction = 0.5
    config.data.batch_size = 2
  return config
