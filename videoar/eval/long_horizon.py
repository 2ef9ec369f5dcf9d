"""The long-horizon protocol: metrics reported separately for consecutive time segments.

A model continues the context of held-out clips for several times its training length; scoring
each segment of the continuation on its own shows error accumulation as decay from segment to
segment (the Resampling Forcing paper's Table 1). Trivial baselines give the floor: a model that
does no better than repeating the last context frame has learnt nothing about motion.
"""

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from videoar.eval.metrics import psnr, ssim
from videoar.eval.objects import BACKGROUND_VALUE, compare_objects, detect_objects

METRIC_TITLES = {
    "psnr": "PSNR (dB, higher is better)",
    "ssim": "SSIM (higher is better)",
    "position_error": "Object position error (px, lower is better)",
    "lost": "Objects lost per frame (lower is better)",
    "invented": "Objects invented per frame (lower is better)",
    "color_drift": "Object colour drift (RGB distance, lower is better)",
    "digit_accuracy": "Digits read as their true label (fraction, higher is better; truth is the ceiling)",
    "ball_position_error": "Ball position error (px, lower is better)",
    "ball_missed": "Ball missed, per frame with a true ball (lower is better)",
    "paddle_row_error": "Paddle row error (px, lower is better)",
}
METRIC_FORMATS = {"psnr": "{:.2f}", "ssim": "{:.3f}", "color_drift": "{:.3f}", "digit_accuracy": "{:.3f}"}
DEFAULT_FORMAT = "{:.2f}"


class FrameScorer(Protocol):
    """Per-frame figures of a continuation that need more than the pixels, e.g. what a classifier
    reads in them (digits.DigitScorer) or where a game's objects are (pong.pong_frame_scores)."""

    def __call__(self, generated: np.ndarray, truth: np.ndarray, frames: slice) -> dict[str, np.ndarray]:
        """{metric: float [B, f]}, NaN where a frame does not count, for generated and truth
        [B, f, H, W, C], which are frames `frames` of the continuation (to look up per-frame
        truth the scorer holds)."""
        ...


def _nanmean(values: np.ndarray) -> float:
    """Mean ignoring NaN; NaN, without numpy's empty-slice warning, when every entry is NaN."""
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else float("nan")


def segment_table(
    generated: np.ndarray,
    truth: np.ndarray,
    *,
    segment_len: int,
    positions: np.ndarray | None = None,
    color_ids: np.ndarray | None = None,
    palette: np.ndarray | None = None,
    scorers: Sequence[FrameScorer] = (),
) -> list[dict]:
    """Score a continuation segment by segment.

    Args:
      generated, truth: [B, F, H, W, C], the F frames after the context (frame 0 is the first
        generated frame).
      segment_len: frames per segment. When F is not a multiple, the last segment keeps the
        remaining frames and is reported as a shorter row (its `frames` says how many) rather than
        dropped, so every generated frame is scored.
      positions: [B, F, K, 2] true object centres of those frames (bouncing world only).
      color_ids: [B, K] (or [K] for all clips) palette index of each object.
      palette: [P, 3]. The object metrics are computed when positions, color_ids and palette are
        all given.
      scorers: more per-frame metrics; each segment reports their means over the clip-frames
        that count.

    Returns one dict per segment, in time order, with keys:
      segment: "first-last" frame indices after the context, inclusive, e.g. "0-7".
      frames: number of frames in the segment.
      psnr, ssim: means over clips and frames (PSNR is inf for a frame reproduced exactly).
      With the object inputs also:
      position_error, color_drift: means over the clip-frames where any true object was found.
      lost, invented: mean counts per frame.
      Each scorer's metrics, e.g. digit_accuracy; ball_position_error, ball_missed,
      paddle_row_error.
    """
    generated = np.asarray(generated)
    truth = np.asarray(truth)
    if generated.shape != truth.shape or generated.ndim != 5:
        raise ValueError(
            f"generated and truth must both be [B, F, H, W, C], got {generated.shape} and {truth.shape}"
        )
    if segment_len < 1:
        raise ValueError(f"segment_len must be >= 1, got {segment_len}")
    object_inputs = (positions, color_ids, palette)
    with_objects = all(value is not None for value in object_inputs)
    if not with_objects and any(value is not None for value in object_inputs):
        raise ValueError("positions, color_ids and palette must be given together")
    if with_objects:
        positions = np.asarray(positions)

    # Scored one segment at a time so memory stays bounded by the segment, not the whole horizon.
    num_frames = generated.shape[1]
    rows = []
    for start in range(0, num_frames, segment_len):
        stop = min(start + segment_len, num_frames)
        segment_generated = generated[:, start:stop]
        segment_truth = truth[:, start:stop]
        row = {
            "segment": f"{start}-{stop - 1}",
            "frames": stop - start,
            "psnr": float(psnr(segment_generated, segment_truth).mean()),
            "ssim": float(ssim(segment_generated, segment_truth).mean()),
        }
        if with_objects:
            detected = detect_objects(segment_generated, palette)
            objects = compare_objects(detected, positions[:, start:stop], color_ids, palette)
            row["position_error"] = _nanmean(objects["position_error"])
            row["lost"] = float(objects["lost"].mean())
            row["invented"] = float(objects["invented"].mean())
            row["color_drift"] = _nanmean(objects["color_drift"])
        for scorer in scorers:
            for name, values in scorer(segment_generated, segment_truth, slice(start, stop)).items():
                row[name] = _nanmean(np.asarray(values, np.float64))
        rows.append(row)
    return rows


def baselines(context: np.ndarray, num_frames: int) -> dict[str, np.ndarray]:
    """Continuations that need no model, from context [B, C, H, W, Ch]; each is
    [B, num_frames, H, W, Ch]. copy_last repeats the last context frame; background is an empty
    frame (all BACKGROUND_VALUE)."""
    context = np.asarray(context)
    copy_last = np.repeat(context[:, -1:], num_frames, axis=1)
    return {"copy_last": copy_last, "background": np.full_like(copy_last, BACKGROUND_VALUE)}


def format_table(tables: dict[str, list[dict]]) -> str:
    """Fixed-width text tables, one block per metric with a row per method and a column per segment.

    tables maps a method name (e.g. "model", "copy_last") to its segment_table rows. Segments and
    metrics are the union over methods, in order of first appearance (known metrics first); a
    method without a value shows "-".
    """
    segments: list[str] = []
    metrics: list[str] = []
    values: dict[tuple[str, str, str], float] = {}
    for method, rows in tables.items():
        for row in rows:
            if row["segment"] not in segments:
                segments.append(row["segment"])
            for name, value in row.items():
                if name in ("segment", "frames"):
                    continue
                if name not in metrics:
                    metrics.append(name)
                values[method, name, row["segment"]] = value
    known_order = list(METRIC_TITLES)
    metrics.sort(key=lambda name: known_order.index(name) if name in known_order else len(known_order))

    method_width = max([len("method")] + [len(method) for method in tables])
    cell_width = max([8] + [len(segment) for segment in segments])

    def line(label: str, cells: list[str]) -> str:
        return label.ljust(method_width) + "".join(f"  {cell:>{cell_width}}" for cell in cells)

    header = line("method", segments)
    blocks = []
    for name in metrics:
        number_format = METRIC_FORMATS.get(name, DEFAULT_FORMAT)
        lines = [METRIC_TITLES.get(name, name), header, "-" * len(header)]
        for method in tables:
            cells = [
                number_format.format(values[key]) if (key := (method, name, segment)) in values else "-"
                for segment in segments
            ]
            lines.append(line(method, cells))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"
