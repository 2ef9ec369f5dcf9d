"""Track the coloured objects of the bouncing world in frames and compare them with the truth.

Every object in a bouncing-world clip has its own palette colour, so a colour identifies an object:
detection segments each frame by nearest palette colour, and comparison looks the true objects up
by their colour ids. Coordinates are (row, col) in pixels with the centre of pixel [i, j] at
(i, j), the array-index convention.
"""

import numpy as np

BACKGROUND_VALUE = -1.0


def detect_objects(
    frames: np.ndarray, palette: np.ndarray, color_tol: float = 0.5, min_pixels: int = 3
) -> dict[str, np.ndarray]:
    """Find each palette colour's blob in every frame.

    A pixel belongs to palette colour p when p is its nearest colour among the palette and the
    background (all channels BACKGROUND_VALUE) and lies within color_tol of it (Euclidean, RGB);
    pixels far from every colour belong to nothing. A colour is present when at least min_pixels
    pixels belong to it, which ignores stray pixels of noise.

    Args:
      frames: [..., H, W, 3] in [-1, 1].
      palette: [P, 3].

    Returns a dict, with [...] the leading axes of frames:
      present: bool [..., P].
      centroid: float [..., P, 2], mean (row, col) of the colour's pixels; NaN where not present.
      pixel_count: int [..., P], pixels of that colour (also counted below min_pixels).
      mean_color: float [..., P, 3], mean RGB of the colour's pixels; NaN where not present.
    """
    values = np.asarray(frames, np.float64)
    palette = np.asarray(palette, np.float64)
    height, width = values.shape[-3:-1]

    # Nearest colour per pixel, one candidate at a time so memory stays at a few [..., H, W] arrays.
    nearest_distance_sq = np.sum(np.square(values - BACKGROUND_VALUE), axis=-1)
    nearest_index = np.full(nearest_distance_sq.shape, -1)
    for index, colour in enumerate(palette):
        distance_sq = np.sum(np.square(values - colour), axis=-1)
        closer = distance_sq < nearest_distance_sq
        nearest_index[closer] = index
        nearest_distance_sq = np.where(closer, distance_sq, nearest_distance_sq)
    assigned = np.where(nearest_distance_sq <= color_tol**2, nearest_index, -1)

    rows = np.arange(height, dtype=np.float64)
    cols = np.arange(width, dtype=np.float64)
    counts, row_sums, col_sums, colour_sums = [], [], [], []
    for index in range(len(palette)):
        mask = (assigned == index).astype(np.float64)
        counts.append(mask.sum(axis=(-2, -1)))
        row_sums.append(np.einsum("...hw,h->...", mask, rows))
        col_sums.append(np.einsum("...hw,w->...", mask, cols))
        colour_sums.append(np.einsum("...hw,...hwc->...c", mask, values))
    pixel_count = np.stack(counts, axis=-1)
    present = pixel_count >= min_pixels
    denominator = np.where(present, pixel_count, np.nan)
    centroid = np.stack([np.stack(row_sums, -1), np.stack(col_sums, -1)], axis=-1) / denominator[..., None]
    mean_color = np.stack(colour_sums, axis=-2) / denominator[..., None]
    return {
        "present": present,
        "centroid": centroid,
        "pixel_count": pixel_count.astype(np.int64),
        "mean_color": mean_color,
    }


def _align_color_ids(true_color_ids: np.ndarray, frame_shape: tuple[int, ...], num_objects: int) -> np.ndarray:
    """Broadcast colour ids given per clip (or once for all) to one set per frame, frame_shape + [K].

    Unlike numpy's trailing alignment, the ids' leading axes are matched to the *first* frame axes:
    ids [B, K] with frames [B, F] apply clip b's ids to all of its F frames.
    """
    ids = np.asarray(true_color_ids).astype(np.int64)
    leading = ids.shape[:-1]
    if ids.ndim == 0 or ids.shape[-1] != num_objects or leading != frame_shape[: len(leading)]:
        raise ValueError(
            f"true_color_ids must be [..., K={num_objects}] with leading axes a prefix of the frame axes "
            f"{frame_shape}, got {ids.shape}"
        )
    per_frame = ids.reshape(leading + (1,) * (len(frame_shape) - len(leading)) + (num_objects,))
    return np.broadcast_to(per_frame, frame_shape + (num_objects,))


def _true_objects(detected: dict[str, np.ndarray], true_color_ids: np.ndarray, num_objects: int):
    """The true objects' detections: (ids [S, K], present [S, K], centroid [S, K, 2]) for
    detections over frames [S] and ids as compare_objects takes them; raises ValueError for ids
    that do not fit the frames or the palette."""
    present = detected["present"]
    ids = _align_color_ids(true_color_ids, present.shape[:-1], num_objects)
    if ids.size and (ids.min() < 0 or ids.max() >= present.shape[-1]):
        raise ValueError(f"true_color_ids must index the {present.shape[-1]} palette colours, got {np.unique(ids)}")
    found = np.take_along_axis(present, ids, axis=-1)
    return ids, found, np.take_along_axis(detected["centroid"], ids[..., None], axis=-2)


def _mean_where(mask: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The mean of `values` over the last axis where `mask` holds; NaN where it holds nowhere
    (values there may be NaN: an absent object's centroid)."""
    count = mask.sum(axis=-1)
    total = np.where(mask, values, 0.0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def compare_objects(
    detected: dict[str, np.ndarray],
    true_positions: np.ndarray,
    true_color_ids: np.ndarray,
    palette: np.ndarray,
) -> dict[str, np.ndarray]:
    """Compare detected objects with the true ones, frame by frame.

    Shapes, with [S] the leading frame axes of `detected` (e.g. [B, F]) and K objects:
      detected: the output of detect_objects on frames [S, H, W, 3].
      true_positions: [S, K, 2], true (row, col) centres.
      true_color_ids: [K], [B, K] or [S, K]: palette index of each object, given once, per clip or
        per frame; the ids' leading axes must be the first axes of [S] and are repeated over the
        rest (so per-clip ids [B, K] serve frames [B, F]). Objects of one clip have distinct ids.
      palette: [P, 3], the palette detection used.

    Returns a dict of [S] arrays:
      position_error: mean distance in pixels of the found true objects' centroids from their true
        centres; NaN where no true object was found.
      lost: int, true objects whose colour is not present.
      invented: int, present colours that belong to no true object.
      color_drift: mean Euclidean RGB distance of the found objects' mean colour from their palette
        colour; NaN where none was found. Only drift within detect_objects' color_tol is visible
        here: beyond it an object counts as lost (and maybe invented as another colour).
    """
    present = detected["present"]
    frame_shape = present.shape[:-1]
    num_colours = present.shape[-1]
    positions = np.asarray(true_positions, np.float64)
    if positions.ndim < 2 or positions.shape[:-2] != frame_shape or positions.shape[-1] != 2:
        raise ValueError(f"true_positions must be {frame_shape} + [K, 2], got {positions.shape}")
    num_objects = positions.shape[-2]
    ids, found, found_centroids = _true_objects(detected, true_color_ids, num_objects)
    num_found = found.sum(axis=-1)
    found_colours = np.take_along_axis(detected["mean_color"], ids[..., None], axis=-2)
    true_colours = np.asarray(palette, np.float64)[ids]
    position_error = _mean_where(found, np.linalg.norm(found_centroids - positions, axis=-1))
    color_drift = _mean_where(found, np.linalg.norm(found_colours - true_colours, axis=-1))

    is_true_colour = (ids[..., None] == np.arange(num_colours)).any(axis=-2)
    return {
        "position_error": position_error,
        "lost": (num_objects - num_found).astype(np.int64),
        "invented": (present & ~is_true_colour).sum(axis=-1).astype(np.int64),
        "color_drift": color_drift,
    }


def object_speed(detected: dict[str, np.ndarray], true_color_ids: np.ndarray) -> np.ndarray:
    """How far the true objects' colours moved since the frame before: float [B, F], the mean over
    the objects present in both frames of the distance (px) between their centroids; NaN at frame
    0 and where no object is present in both.

    A model can keep its objects (few lost) by copying its last frame: copying the last context
    frame gives 0 here, the truth about 1.5 px a frame, so a model that freezes shows as a speed
    far below the truth's.

    Args:
      detected: detect_objects on frames [B, F, H, W, 3].
      true_color_ids: [B, K] or [K], the palette index of each true object.

    Raises ValueError for detections that are not [B, F] frames, or ids that do not fit them or
    the palette.
    """
    present = detected["present"]
    if present.ndim != 3:
        raise ValueError(f"object_speed needs detections of frames [B, F, H, W, 3], got {present.shape}")
    _, found, centres = _true_objects(detected, true_color_ids, np.shape(true_color_ids)[-1])
    speed = _mean_where(found[:, 1:] & found[:, :-1],
                        np.linalg.norm(centres[:, 1:] - centres[:, :-1], axis=-1))
    return np.concatenate([np.full(speed.shape[:1] + (1,), np.nan), speed], axis=1)


# An object counts as hidden below this visible fraction of its own coverage (a 7x7 square shows
# under 5 pixels: too little to place it) and as back in view from RETURNED_FROM, where the
# centroid of what shows lies within a pixel of the true centre.
HIDDEN_BELOW = 0.1
RETURNED_FROM = 0.9


def returned_after_hiding(visible: np.ndarray) -> np.ndarray:
    """Where an object is back in view after an occlusion, from its true visible fractions.

    Args:
      visible: [..., F, K], each object's visible fraction per frame (the bouncing world's
        `visible`), over the whole clip (context and continuation).

    Returns bool [..., F, K]: True at frame t for object k when it is in view at t (visible >=
    RETURNED_FROM), was hidden (visible < HIDDEN_BELOW) at some frame s < t, and in view at some
    frame r < s: it was seen, went out of sight, and is back, so only a memory of it from before
    the occlusion can put it back in the right place with its colour.
    """
    visible = np.asarray(visible)
    in_view = visible >= RETURNED_FROM
    hidden = visible < HIDDEN_BELOW
    # Along the frame axis: seen at or before t, then hidden at or before t after being seen.
    seen = np.logical_or.accumulate(in_view, axis=-2)
    seen_before = np.concatenate([np.zeros_like(seen[..., :1, :]), seen[..., :-1, :]], axis=-2)
    hidden_after_seen = np.logical_or.accumulate(hidden & seen_before, axis=-2)
    return in_view & hidden_after_seen


def recovered(
    detected: dict[str, np.ndarray],
    true_positions: np.ndarray,
    true_color_ids: np.ndarray,
    returned: np.ndarray,
    max_error: float = 3.5,
) -> np.ndarray:
    """The fraction of the objects back in view after an occlusion that a frame shows again.

    Args, with [S] the leading frame axes (e.g. [B, F]) and K objects:
      detected: detect_objects on the frames [S, H, W, 3].
      true_positions: [S, K, 2], true (row, col) centres.
      true_color_ids: [K], [B, K] or [S, K], as compare_objects takes them.
      returned: bool [S, K], returned_after_hiding of the truth at those frames.
      max_error: pixels; an object is recovered where its colour is present within this distance
        of its true centre (3.5: the centroid lies inside the true object, radius 3.5).

    Returns float [S]: recovered objects over returned ones; NaN where no object returned.
    Raises ValueError for shapes that do not match.
    """
    present = detected["present"]
    frame_shape = present.shape[:-1]
    positions = np.asarray(true_positions, np.float64)
    returned = np.asarray(returned, bool)
    if positions.shape[:-1] != returned.shape or returned.shape[:-1] != frame_shape:
        raise ValueError(
            f"true_positions {positions.shape} and returned {returned.shape} must be {frame_shape}"
            " + [K, 2] and + [K]"
        )
    _, found, centroids = _true_objects(detected, true_color_ids, returned.shape[-1])
    with np.errstate(invalid="ignore"):  # NaN centroids of colours not present
        close = found & (np.linalg.norm(centroids - positions, axis=-1) <= max_error)
    return _mean_where(returned, close)


class RecoveryScorer:
    """long_horizon's FrameScorer of `recovered` for a continuation: {"recovered": [B, f]}."""

    def __init__(self, positions: np.ndarray, color_ids: np.ndarray, returned: np.ndarray,
                 palette: np.ndarray):
        """positions [B, F, K, 2], returned bool [B, F, K] (returned_after_hiding over the whole
        clip, then the continuation's F frames), color_ids [B, K], palette [P, 3]."""
        self.positions, self.color_ids = positions, color_ids
        self.returned, self.palette = returned, palette

    def __call__(self, generated: np.ndarray, truth: np.ndarray, frames: slice) -> dict[str, np.ndarray]:
        del truth  # the true states say where the objects are
        detected = detect_objects(generated, self.palette)
        return {"recovered": recovered(detected, self.positions[:, frames], self.color_ids,
                                       self.returned[:, frames])}


def overlapping(positions: np.ndarray, radius: float) -> np.ndarray:
    """Which objects overlap another one in each frame, from their true centres: bool [..., F, K]
    for positions [..., F, K, 2]. Two objects overlap where their bounding squares (side
    2 * radius, the bouncing world's objects) do: their centres are closer than 2 * radius on both
    axes, so one may be drawn over part of the other."""
    positions = np.asarray(positions, np.float64)
    apart = np.abs(positions[..., :, None, :] - positions[..., None, :, :])  # [..., F, K, K, 2]
    overlap = (apart < 2 * radius).all(axis=-1)
    overlap &= ~np.eye(positions.shape[-2], dtype=bool)
    return overlap.any(axis=-1)


def overlapped_before(positions: np.ndarray, radius: float) -> np.ndarray:
    """Which objects have overlapped another one at or before each frame, from their true centres.

    Two objects overlap where their bounding squares (side 2 * radius, the bouncing world's
    objects) do: their centres are closer than 2 * radius on both axes, so one may be drawn over
    part of the other, and a model has to keep both apart through it.

    Args:
      positions: [..., F, K, 2] true (row, col) centres over the whole clip, context included.
      radius: the objects' half side in pixels (BouncingWorld.radius).

    Returns bool [..., F, K]: True at frame t for object k once it has overlapped any other object
    at some frame s <= t.
    """
    return np.logical_or.accumulate(overlapping(positions, radius), axis=-2)


class OverlapScorer:
    """long_horizon's FrameScorer of the objects lost, split by whether they have overlapped.

    {"lost_after_overlap": [B, f], "lost_never_overlapped": [B, f]}: the fraction of a frame's
    true objects that are lost (compare_objects' sense: their colour is not present), among those
    that have overlapped another object by this frame (overlapped_before, context included) and
    among the rest; NaN where a frame has no such object. A model that keeps objects apart loses
    as few after an overlap as before one; the truth loses about 0.01 of those that have
    overlapped (an object wholly hidden behind the other) and none of the rest."""

    def __init__(self, color_ids: np.ndarray, overlapped: np.ndarray, palette: np.ndarray):
        """color_ids [B, K], overlapped bool [B, F, K] (overlapped_before over the whole clip, then
        the continuation's F frames), palette [P, 3]."""
        self.color_ids, self.overlapped, self.palette = color_ids, overlapped, palette

    def __call__(self, generated: np.ndarray, truth: np.ndarray, frames: slice) -> dict[str, np.ndarray]:
        del truth  # the true states say which objects there are
        overlapped = self.overlapped[:, frames]
        present = detect_objects(generated, self.palette)["present"]
        ids = _align_color_ids(self.color_ids, present.shape[:-1], overlapped.shape[-1])
        lost = ~np.take_along_axis(present, ids, axis=-1)  # [B, f, K]
        return {"lost_after_overlap": _mean_where(overlapped, lost),
                "lost_never_overlapped": _mean_where(~overlapped, lost)}
