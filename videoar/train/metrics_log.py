"""What a run logs: WORKDIR/metrics.jsonl (one strict-JSON object per log step) and tensorboard.

Only the main process writes; the others hold a MetricsLog that writes nothing, so the trainer
calls it the same way on every process.
"""

from __future__ import annotations

import io
import json
import math
import os

import numpy as np
from PIL import Image
from tensorboardX import SummaryWriter
from tensorboardX.proto.summary_pb2 import Summary

from videoar import errors, files, media

# Frames per second of the sample videos; the bouncing world moves 1-2 px a frame, so 4 fps shows
# the motion without a blur of frames.
VIDEO_FPS = 4
# Frames are upscaled (nearest neighbour) to at least this many pixels high: a 32x32 frame is too
# small to judge on screen.
VIDEO_MIN_HEIGHT = 64


def strict(value):
  """`value` with every non-finite float replaced by None: JSON that strict readers accept."""
  if isinstance(value, dict):
    return {key: strict(v) for key, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [strict(v) for v in value]
  if isinstance(value, (float, np.floating)):
    return float(value) if math.isfinite(value) else None
  if isinstance(value, np.integer):
    return int(value)
  return value


class MetricsLog:
  """Appends scalars per step to metrics.jsonl and tensorboard (main process only)."""

  def __init__(self, workdir: str, *, is_main: bool, resume_step: int):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.writer = None
    if is_main:
      _drop_metrics_after(self.path, resume_step)
      # A killed run's events file holds steps past the checkpoint that the resumed run logs
      # again; purge_step writes TensorBoard's restart marker, which hides the earlier files'
      # events from that step on (without it both values of a step were shown).
      self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"),
                                  purge_step=resume_step + 1 if resume_step else None)

  def write(self, step: int, metrics: dict[str, float]) -> None:
    """Appends the scalars {name: value} of `step` to tensorboard (as train/NAME) and as one
    line to metrics.jsonl (non-finite values as null); nothing on other processes."""
    if self.writer is None:
      return
    for key, value in metrics.items():
      self.writer.add_scalar(f"train/{key}", value, step)
    with open(self.path, "a") as f:
      f.write(json.dumps(strict(dict(step=step, **metrics)), allow_nan=False) + "\n")

  def write_eval(self, step: int, scalars: dict[str, float], strip_hwc: np.ndarray,
                 videos_bthwc: np.ndarray) -> None:
    """Evaluation while training: scalars {"METRIC/SEGMENT": value} to tensorboard (eval/...)
    and to metrics.jsonl (as "eval/METRIC/SEGMENT"), the strip [H, W, C] in [-1, 1] as the
    image eval/strip, and the videos [B, T, H, W, C] in [-1, 1] (C = 1 or 3) as the video
    eval/videos (video_summary: the clips stacked top to bottom)."""
    if self.writer is None:
      return
    scalars = {f"eval/{key}": value for key, value in scalars.items()}
    for key, value in scalars.items():
      if math.isfinite(value):  # no objects found: no position error to plot
        self.writer.add_scalar(key, value, step)
    self.writer.add_image("eval/strip", np.clip((strip_hwc + 1.0) / 2.0, 0.0, 1.0), step,
                          dataformats="HWC")
    self.writer.file_writer.add_summary(video_summary("eval/videos", videos_bthwc), step)
    with open(self.path, "a") as f:
      f.write(json.dumps(strict(dict(step=step, **scalars)), allow_nan=False) + "\n")

  def write_resume(self, step: int, changes: list[str]) -> None:
    """Records that the run resumed at `step` with other values of the keys its evaluation
    while training reads (`changes`, e.g. ["sample.num_steps 20 -> 5"]): its figures before
    and after `step` were made differently (eval.learning_curve says so)."""
    if self.writer is None:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(dict(step=step, resumed_with=changes)) + "\n")

  def routing_histogram(self, step: int, frequencies_nn: np.ndarray) -> None:
    """Logs how often each history frame is routed to, as a histogram over the history frame
    index: the mean routing frequency [N query frames, N history frames] (NaN where the mask
    hides the history frame: teacher.routing_frequencies) averaged over the query frames that may
    see each history frame (0 for a frame none may see)."""
    if self.writer is None:
      return
    n = frequencies_nn.shape[0]
    visible = np.isfinite(frequencies_nn)
    per_frame = np.where(visible, frequencies_nn, 0).sum(0) / np.maximum(visible.sum(0), 1)
    self.writer.add_histogram_raw(
        "routing/history_frame", min=0, max=n - 1, num=n,
        sum=float((per_frame * np.arange(n)).sum()),
        sum_squares=float((per_frame * np.arange(n) ** 2).sum()),
        bucket_limits=list(np.arange(n) + 0.5), bucket_counts=list(per_frame), global_step=step)

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()


def video_summary(tag: str, videos_bthwc: np.ndarray, fps: int = VIDEO_FPS) -> Summary:
  """The videos [B, T, H, W, C] in [-1, 1] (C = 1 or 3), stacked top to bottom and upscaled to
  at least VIDEO_MIN_HEIGHT px a clip, as one looping animated GIF in an image summary: the
  record tensorboardX's add_video writes, which tensorboard plays in its Images tab.

  add_video itself needs moviepy, whose releases (2.2.1) pin pillow < 12 against this project's
  pillow 13, so the GIF is encoded here with Pillow. Raises ValueError for another shape."""
  videos = np.asarray(videos_bthwc, np.float32)
  if videos.ndim != 5 or videos.shape[-1] not in (1, 3):
    raise ValueError(f"videos must be [B, T, H, W, 1 or 3], got {videos.shape}")
  num_clips, num_frames, height, _, _ = videos.shape
  frames = media.to_uint8(videos, upscale=max(1, -(-VIDEO_MIN_HEIGHT // height)))
  frames = frames.transpose(1, 0, 2, 3, 4).reshape(num_frames, -1, *frames.shape[3:])
  images = [Image.fromarray(frame) for frame in frames]
  buffer = io.BytesIO()
  images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:],
                 duration=round(1000 / fps), loop=0)
  image = Summary.Image(height=frames.shape[1], width=frames.shape[2], colorspace=3,
                        encoded_image_string=buffer.getvalue())
  return Summary(value=[Summary.Value(tag=tag, image=image)])


def _drop_metrics_after(path: str, step: int) -> None:
  """A resumed run logs the steps after its checkpoint again: drops what a killed run logged past
  it, and a last line cut short by the kill. The file is replaced whole (a rename), so a crash
  here leaves the old log.

  Raises:
    errors.UserError: a whole line that is not a record with a "step" (the file was edited or
      damaged): nothing is dropped, the line is named.
  """
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  kept = []
  for number, line in enumerate(lines, 1):
    if not line.endswith("\n"):  # cut short by a kill: only the last line can be
      continue
    if not line.strip():  # a blank line, as JSON Lines readers skip
      continue
    try:
      logged = json.loads(line)["step"]
    except (ValueError, TypeError, KeyError):
      raise errors.UserError(
          f"{path}, line {number}, is not a metrics record ({line.strip()[:40]!r}): mend or"
          " delete that line, then resume") from None
    if logged <= step:
      kept.append(line)
  if len(kept) < len(lines):
    with files.replaced(path) as f:
      f.writelines(kept)
