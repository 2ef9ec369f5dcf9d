"""Writing frames for people to look at: mp4 videos and PNG strips."""

from __future__ import annotations

import av
import imageio.v2 as imageio
import numpy as np

# H.264 where this PyAV build has libx264 (the PyPI wheels do), else MPEG-4 part 2, which every
# build has.
_CODEC = "libx264" if "libx264" in av.codecs_available else "mpeg4"


def to_uint8(frames: np.ndarray, upscale: int = 1) -> np.ndarray:
  """[..., H, W, C] in [-1, 1] -> uint8 RGB, nearest-neighbour upscaled for viewing."""
  x = np.clip((np.asarray(frames, np.float32) + 1.0) * 127.5, 0, 255).round().astype(np.uint8)
  if x.shape[-1] == 1:
    x = np.repeat(x, 3, axis=-1)
  if upscale > 1:
    x = x.repeat(upscale, axis=-3).repeat(upscale, axis=-2)
  return x


def write_mp4(path: str, frames_fhwc: np.ndarray, fps: int = 8, upscale: int = 4) -> None:
  """Writes frames [F, H, W, C] in [-1, 1] (C = 1 or 3) to an mp4 of yuv420p video at `fps` frames
  per second, each upscaled `upscale` times.

  PyAV encodes in this process: an ffmpeg subprocess would be forked from a process that runs
  JAX's threads. yuv420p stores colour at half resolution, so the upscaled height and width must
  be even; raises ValueError otherwise.
  """
  video = to_uint8(frames_fhwc, upscale)
  _, height, width, _ = video.shape
  if height % 2 or width % 2:
    raise ValueError(f"{path}: frames of {height}x{width} pixels after upscale={upscale} cannot be"
                     " written as yuv420p video: height and width must be even")
  with av.open(path, mode="w") as container:
    stream = container.add_stream(_CODEC, rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    for frame in video:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode())  # flushes the frames the encoder still holds


def frame_strip(rows_bfhwc: np.ndarray, every: int = 1, gap: int = 1) -> np.ndarray:
  """Videos as rows, frames as columns (every `every`-th), separated by white lines."""
  rows = np.asarray(rows_bfhwc)[:, ::every]
  b, f, h, w, c = rows.shape
  canvas = np.ones((b * (h + gap) - gap, f * (w + gap) - gap, c), np.float32)
  for i in range(b):
    for j in range(f):
      canvas[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = rows[i, j]
  return canvas


def write_png(path: str, image_hwc: np.ndarray, upscale: int = 3) -> None:
  """Writes an image [H, W, C] in [-1, 1] (C = 1 or 3) to `path` (a .png: imageio picks the
  format by the name) as uint8 RGB, nearest-neighbour upscaled `upscale` times (to_uint8)."""
  imageio.imwrite(path, to_uint8(image_hwc, upscale))
