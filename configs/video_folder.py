"""Train on your own videos: every video file under data.path, recursively, at 64x64.

  python -m videoar.main --config=configs/video_folder.py --config.data.path=DIR --workdir=DIR

The first run decodes every file once (PyAV) into DIR/.videoar_cache/; files that cannot be
decoded are skipped with a warning naming each and a count. Frames are centre-cropped to a
square and resized (data.options.fit="resize" squashes the whole picture instead); stride 2
keeps every second frame, about 12-15 fps from 25-30 fps footage. The last 10 % of every video
is held out for sampling and evaluation, so videos need 10x the evaluation clip length of
2 + 3 x 8 = 26 frames at the stride to take part in it (raise data.options.eval_fraction for
short clips).

Class labels: put each class's videos in its own subfolder, set data.options.labels=True and
model.num_classes to the number of subfolders; labels are the subfolder names in sorted order.

Model: configs/bouncing_tiny.py's causal DiT (width 128, depth 4, 8x8 patches) on 8 frames.

Variants (`--config=configs/video_folder.py:VARIANT`):
  test   a few steps of a tiny model, for the test suite and smoke runs.
"""

import ml_collections

from configs import bouncing_tiny


def get_config(variant: str = ""):
  if variant not in ("", "test"):
    raise ValueError(f"config variant {variant!r} is unknown; allowed: '', 'test'")
  config = bouncing_tiny.get_config(variant)
  config.data.source = "video_folder"
  config.data.path = ml_collections.config_dict.placeholder(str)
  config.data.options = ml_collections.ConfigDict(dict(
      size=64, fit="crop", labels=False, stride=2, eval_fraction=0.1))
  config.data.num_frames = 8
  config.data.batch_size = 8
  config.data.prefetch = "threads"
  config.data.num_workers = 2
  if variant == "test":
    config.data.options.stride = 1
    config.data.options.eval_fraction = 0.5
    config.data.batch_size = 2
  return config
