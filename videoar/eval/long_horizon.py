"""The long-horizon protocol: metrics reported separately for consecutive time segments.

A model continues the context of held-out clips for several times its training length; scoring
each segment of the continuation on its own shows error accumulation as decay from segment to
segment (the Resampling Forcing paper's Table 1). Trivial baselines give the floor: a model that
does no better than repeating the last context frame has learnt nothing about motion.
"""

import textwrap
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from videoar.eval.metrics import psnr, ssim
from videoar.eval.objects import BACKGROUND_VALUE, compare_objects, detect_objects, object_speed

METRIC_TITLES = {
    "psnr": "PSNR (dB, higher is better)",
    "ssim": "SSIM (higher is better)",
    "lpips": "LPIPS (AlexNet, frames upsampled to at least 64 px; lower is better)",
    "fvd": "FVD of the segment's clips (I3D logits, lower is better; not comparable with published FVD)",
    "position_error": "Object position error (px, lower is better)",
    "speed": "Object speed (px a frame moved since the frame before, within the segment; the truth's is right, copying the last frame gives 0)",
    "lost": "Objects lost per frame (lower is better)",
    "invented": "Objects invented per frame (lower is better)",
    "color_drift": "Object colour drift (RGB distance, lower is better)",
    "lost_after_overlap": "Objects lost, of those that have overlapped another (fraction, lower is better)",
    "lost_never_overlapped": "Objects lost, of those that have not overlapped another (fraction, lower is better)",
    "recovered": "Objects recovered after occlusion (fraction of those back in view found in their colour within 3.5 px; higher is better)",
    "digit_accuracy": "Clear digits read as their true label (fraction, higher is better; truth is the ceiling)",
    "digit_accuracy_seen": "Clear digits read as their true label, of those the context frames showed clear (fraction)",
    "ink_ratio": "Ink drawn over the truth's (pixels brighter than mid-grey; 1 is right, above 1 digits swell, below it they fade)",
    "ball_position_error": "Ball position error (px, lower is better)",
    "ball_missed": "Ball missed, per frame with a true ball (lower is better)",
    "paddle_row_error": "Paddle row error (px, lower is better)",
}
METRIC_FORMATS = {
    "psnr": "{:.2f}",
    "ssim": "{:.3f}",
    "lpips": "{:.3f}",
    "fvd": "{:.0f}",
    "color_drift": "{:.3f}",
    "recovered": "{:.3f}",
    "digit_accuracy": "{:.3f}",
    "digit_accuracy_seen": "{:.3f}",
}
DEFAULT_FORMAT = "{:.2f}"
# Averaged over every clip-frame, so that an exact frame's infinite PSNR shows as such; the other
# per-frame metrics are NaN where a frame does not count and are averaged over the rest.
PLAIN_MEANS = ("psnr", "ssim", "lost", "invented")


class FrameScorer(Protocol):
    """Per-frame figures of a continuation that need more than the pixels, e.g. what a classifier
    reads in them (digits.DigitScorer) or where a game's objects are (pong.pong_frame_scores)."""

    def __call__(self, generated: np.ndarray, truth: np.ndarray, frames: slice) -> dict[str, np.ndarray]:
        """{metric: float [B, f]}, NaN where a frame does not count, for generated and truth
        [B, f, H, W, C], which are frames `frames` of the continuation (to look up per-frame
        truth the scorer holds)."""
        ...


class SegmentScorer(Protocol):
    """Figures of a whole segment that are not means over frames, e.g. the distance between the
    distributions of generated and true clips (perceptual.FvdScorer)."""

    def __call__(self, generated: np.ndarray, truth: np.ndarray, frames: slice) -> dict[str, float]:
        """{metric: value} for generated and truth [B, f, H, W, C], frames `frames` of the
        continuation."""
        ...


def _nanmean(values: np.ndarray) -> float:
    """Mean ignoring NaN; NaN, without numpy's empty-slice warning, when every entry is NaN."""
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else float("nan")


def _mean_per_frame(values: np.ndarray, ignore_nan: bool) -> np.ndarray:
    """[B, f] -> [f]: the mean over clips, ignoring NaN if asked (NaN where all are)."""
    if not ignore_nan:
        return values.mean(axis=0)
    kept = ~np.isnan(values)
    with np.errstate(invalid="ignore"):
        return np.where(kept, values, 0.0).sum(axis=0) / kept.sum(axis=0)


def segment_table(
    generated: np.ndarray,
    truth: np.ndarray,
    *,
    segment_len: int,
    positions: np.ndarray | None = None,
    color_ids: np.ndarray | None = None,
    palette: np.ndarray | None = None,
    scorers: Sequence[FrameScorer] = (),
    segment_scorers: Sequence[SegmentScorer] = (),
    per_frame: bool = False,
) -> list[dict] | tuple[list[dict], dict[str, np.ndarray]]:
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
      segment_scorers: figures of each segment as a whole, e.g. FVD.
      per_frame: also return every per-frame metric per frame.

    Returns one dict per segment, in time order, with keys:
      segment: "first-last" frame indices after the context, inclusive, e.g. "0-7".
      frames: number of frames in the segment.
      psnr, ssim: means over clips and frames (PSNR is inf for a frame reproduced exactly).
      With the object inputs also:
      position_error, color_drift: means over the clip-frames where any true object was found.
      speed: objects.object_speed's mean over the segment's frames after its first.
      lost, invented: mean counts per frame.
      Each scorer's metrics, e.g. lpips, digit_accuracy; ball_position_error, ball_missed,
      paddle_row_error; then each segment scorer's, e.g. fvd.
    With per_frame, (those rows, {metric: float64 [F]}): each per-frame metric (not the segment
    scorers') averaged over the clips at every frame, the same way as over a segment's clip-frames.
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
    curves: dict[str, list[np.ndarray]] = {}
    for start in range(0, num_frames, segment_len):
        stop = min(start + segment_len, num_frames)
        frames = slice(start, stop)
        segment_generated = generated[:, frames]
        segment_truth = truth[:, frames]
        values = {"psnr": psnr(segment_generated, segment_truth), "ssim": ssim(segment_generated, segment_truth)}
        if with_objects:
            detected = detect_objects(segment_generated, palette)
            values.update(compare_objects(detected, positions[:, frames], color_ids, palette))
            values["speed"] = object_speed(detected, color_ids)
        for scorer in scorers:
            values.update(scorer(segment_generated, segment_truth, frames))
        row = {"segment": f"{start}-{stop - 1}", "frames": stop - start}
        for name, clip_frames in values.items():
            clip_frames = np.asarray(clip_frames, np.float64)
            row[name] = float(clip_frames.mean()) if name in PLAIN_MEANS else _nanmean(clip_frames)
            if per_frame:
                curves.setdefault(name, []).append(_mean_per_frame(clip_frames, name not in PLAIN_MEANS))
        for scorer in segment_scorers:
            row.update(scorer(segment_generated, segment_truth, frames))
        rows.append(row)
    if per_frame:
        return rows, {name: np.concatenate(parts) for name, parts in curves.items()}
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
    method without a value, or with None (how strict JSON stores a figure that is not finite), shows
    "-".
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
                "-" if (value := values.get((method, name, segment))) is None else number_format.format(value)
                for segment in segments
            ]
            lines.append(line(method, cells))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def plot_per_frame(curves: dict[str, dict[str, np.ndarray]], path: str, segment_len: int) -> None:
    """Writes a PNG to `path`: a panel per metric against the frame index after the context, a line
    per method, dotted lines between segments of segment_len frames.

    curves maps a method name to its segment_table(..., per_frame=True) values {metric: [F]};
    metrics are the union over methods (known metrics first). A value that is not finite (the
    PSNR of a frame reproduced exactly) is not drawn, so the truth has no PSNR line.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display is needed or assumed
    import matplotlib.pyplot as plt

    known_order = list(METRIC_TITLES)
    metrics = sorted(
        {name for values in curves.values() for name in values},
        key=lambda name: (known_order.index(name) if name in known_order else len(known_order), name),
    )
    columns = min(3, len(metrics))
    rows = -(-len(metrics) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, metrics):
        num_frames = 0
        for index, (method, values) in enumerate(curves.items()):
            if name in values:
                series = np.asarray(values[name], np.float64)
                num_frames = max(num_frames, len(series))
                # Methods often coincide (no object found: all lost); styles keep each one visible.
                ax.plot(np.arange(len(series)), np.where(np.isfinite(series), series, np.nan), label=method,
                        linestyle=("-", "--", "-.", ":")[index % 4], linewidth=2.0 if index == 0 else 1.3)
        for boundary in range(segment_len, num_frames, segment_len):
            ax.axvline(boundary - 0.5, color="grey", linestyle=":", linewidth=0.8)
        ax.set_title(textwrap.fill(METRIC_TITLES.get(name, name), 45), fontsize=8)
        ax.set_xlabel("frame after the context", fontsize=8)
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=7)
    for ax in axes.flat[len(metrics) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
