"""Writing mp4s and PNGs for people to look at."""

import os
import subprocess

import av
import imageio.v2 as imageio
import numpy as np
import pytest

from videoar import media


def _decode(path) -> np.ndarray:
  with av.open(path) as container:
    return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def _ramp(num_frames, height, width, channels):
  """Smooth frames in [-1, 1], different each frame, that a lossy codec keeps closely."""
  y = np.linspace(-1, 1, height)[:, None, None]
  x = np.linspace(-1, 1, width)[None, :, None]
  c = np.linspace(-0.5, 0.5, channels)[None, None, :]
  return np.stack([np.clip(0.5 * y + 0.3 * x + c + 0.1 * f - 0.2, -1, 1)
                   for f in range(num_frames)]).astype(np.float32)


def _no_subprocess(*args, **kwargs):
  raise AssertionError("a subprocess was started")


# mpeg4 is what builds of PyAV without libx264 write.
@pytest.mark.parametrize("codec,decoder", [("libx264", "h264"), ("mpeg4", "mpeg4")])
@pytest.mark.parametrize("channels", [3, 1])
def test_mp4_round_trips_every_frame_in_process(tmp_path, monkeypatch, capfd, channels, codec,
                                                decoder):
  monkeypatch.setattr(media, "_CODEC", codec)
  for module, name in [(subprocess, "Popen"), (os, "fork"), (os, "posix_spawn"),
                       (os, "posix_spawnp")]:
    monkeypatch.setattr(module, name, _no_subprocess)
  frames = _ramp(5, 8, 12, channels)
  path = str(tmp_path / "video.mp4")
  media.write_mp4(path, frames, fps=8, upscale=4)

  with av.open(path) as container:
    assert container.streams.video[0].codec_context.name == decoder
  decoded = _decode(path)
  assert decoded.shape == (5, 32, 48, 3)
  expected = media.to_uint8(frames, 4)
  assert np.abs(decoded.astype(np.float32) - expected).mean() < 4  # of 255: lossy, but close
  assert capfd.readouterr().err == ""  # no encoder chatter


def test_mp4_of_odd_size_raises_one_line_naming_the_file(tmp_path):
  path = str(tmp_path / "odd.mp4")
  with pytest.raises(ValueError) as error:
    media.write_mp4(path, _ramp(2, 5, 6, 3), upscale=1)
  assert str(error.value) == (f"{path}: frames of 5x6 pixels after upscale=1 cannot be written as"
                              " yuv420p video: height and width must be even")
  assert not os.path.exists(path)


def test_png_strip_round_trips(tmp_path):
  rows = _ramp(3, 4, 4, 3)[None].repeat(2, axis=0)  # 2 videos of 3 frames
  path = str(tmp_path / "strip.png")
  media.write_png(path, media.frame_strip(rows), upscale=3)
  image = imageio.imread(path)
  assert image.shape == (3 * (2 * 4 + 1), 3 * (3 * 4 + 2), 3)
  np.testing.assert_array_equal(image[:12, :12], media.to_uint8(rows[0, 0], 3))
