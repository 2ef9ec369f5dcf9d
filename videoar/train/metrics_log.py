"""What a run logs: WORKDIR/metrics.jsonl (one strict-JSON object per log step) and tensorboard.

Only the main process writes; the others hold a MetricsLog that writes nothing, so the trainer
calls it the same way on every process.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
from tensorboardX import SummaryWriter


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
      self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if self.writer is None:
      return
    for key, value in metrics.items():
      self.writer.add_scalar(f"train/{key}", value, step)
    with open(self.path, "a") as f:
      f.write(json.dumps(strict(dict(step=step, **metrics)), allow_nan=False) + "\n")

  def write_eval(self, step: int, scalars: dict[str, float], strip_hwc: np.ndarray) -> None:
    """Evaluation while training: scalars {"METRIC/SEGMENT": value} to tensorboard (eval/...)
    and to metrics.jsonl (as "eval/METRIC/SEGMENT"), the strip [H, W, 3] in [-1, 1] as an
    image."""
    if self.writer is None:
      return
    scalars = {f"eval/{key}": value for key, value in scalars.items()}
    for key, value in scalars.items():
      if math.isfinite(value):  # no objects found: no position error to plot
        self.writer.add_scalar(key, value, step)
    self.writer.add_image("eval/strip", np.clip((strip_hwc + 1.0) / 2.0, 0.0, 1.0), step,
                          dataformats="HWC")
    with open(self.path, "a") as f:
      f.write(json.dumps(strict(dict(step=step, **scalars)), allow_nan=False) + "\n")

  def routing_histogram(self, step: int, frequencies_nn: np.ndarray) -> None:
    """Logs how often each history frame is routed to, as a histogram over the history frame
    index: the mean routing frequency [N query frames, N history frames] averaged over the query
    frames that may see each history frame."""
    if self.writer is None:
      return
    n = frequencies_nn.shape[0]
    visible = np.tril(np.ones((n, n)), -1)
    per_frame = (frequencies_nn * visible).sum(0) / np.maximum(visible.sum(0), 1)
    self.writer.add_histogram_raw(
        "routing/history_frame", min=0, max=n - 1, num=n,
        sum=float((per_frame * np.arange(n)).sum()),
        sum_squares=float((per_frame * np.arange(n) ** 2).sum()),
        bucket_limits=list(np.arange(n) + 0.5), bucket_counts=list(per_frame), global_step=step)

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()


def _drop_metrics_after(path: str, step: int) -> None:
  """A resumed run logs the steps after its checkpoint again: drops what a killed run logged past
  it, and a last line cut short by the kill."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  kept = [line for line in lines if line.endswith("\n") and json.loads(line)["step"] <= step]
  if len(kept) < len(lines):
    with open(path, "w") as f:
      f.writelines(kept)
