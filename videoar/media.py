"""Writing frames for people to look at: mp4 videos and PNG strips."""

from __future__ import annotations

import imageio.v2 as imageio
import numpy as np


def to_uint8(frames: np.ndarray, upscale: int = 1) -> np.ndarray:
  """[..., H, W, C] in [-1, 1] -> uint8 RGB, nearest-neighbour upscaled for viewing."""
  x = np.clip((np.asarray(frames, np.float32) + 1.0) * 127.5, 0, 255).round().astype(np.uint8)
  if x.shape[-1] == 1:
    x = np.repeat(x, 3, axis=-1)
  if upscale > 1:
    x = x.repeat(upscale, axis=-3).repeat(upscale, axis=-2)
  return x


def write_mp4(path: str, frames_fhwc: np.ndarray, fps: int = 8, upscale: int = 4) -> None:
  imageio.mimwrite(path, to_uint8(frames_fhwc, upscale), fps=fps, macro_block_size=1)


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
  imageio.imwrite(path, to_uint8(image_hwc, upscale))
