"""Sample videos in tensorboard: what evaluation while training writes (metrics_log.write_eval),
read back from the raw tfevents records."""

import io
import struct

import numpy as np
import pytest
from PIL import Image, ImageSequence
from tensorboardX.proto import event_pb2

from videoar.train import metrics_log


def _events(directory):
  """Every Event in the tfevents files under `directory` (records: length u64, its crc u32, the
  data, its crc u32)."""
  events = []
  for path in sorted(directory.iterdir()):
    data = path.read_bytes()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      event = event_pb2.Event()
      event.ParseFromString(data[offset + 12:offset + 12 + length])
      events.append(event)
      offset += 12 + length + 4
  return events


@pytest.mark.parametrize("channels", [3, 1])
def test_write_eval_writes_the_videos_as_an_animated_gif_frame_for_frame(tmp_path, channels):
  rng = np.random.default_rng(0)
  # Values on the 8-bit grid, so that the GIF's 256-colour palette holds them exactly.
  levels = rng.integers(0, 4, size=(2, 5, 8, 16, channels)) * 85
  videos = levels / 127.5 - 1.0
  log = metrics_log.MetricsLog(str(tmp_path), is_main=True, resume_step=0)
  log.write_eval(7, {"psnr/0-7": 20.0}, np.zeros((8, 8, 3)), videos)
  log.close()

  values = {value.tag: (event.step, value) for event in _events(tmp_path / "tensorboard")
            for value in event.summary.value}
  assert set(values) == {"eval/psnr/0-7", "eval/strip", "eval/videos"}
  step, video = values["eval/videos"]
  scale = metrics_log.VIDEO_MIN_HEIGHT // 8
  assert step == 7
  assert (video.image.height, video.image.width) == (2 * 8 * scale, 16 * scale)
  gif = Image.open(io.BytesIO(video.image.encoded_image_string))
  assert gif.format == "GIF"
  frames = np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(gif)])
  expected = np.broadcast_to(levels, levels.shape[:-1] + (3,))
  expected = expected.transpose(1, 0, 2, 3, 4).reshape(5, 16, 16, 3)  # clips top to bottom
  np.testing.assert_array_equal(frames, expected.repeat(scale, 1).repeat(scale, 2))


def test_video_summary_names_a_bad_shape():
  with pytest.raises(ValueError, match=r"videos must be \[B, T, H, W, 1 or 3\], got \(5, 8, 8, 3\)"):
    metrics_log.video_summary("v", np.zeros((5, 8, 8, 3)))
