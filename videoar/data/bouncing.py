"""The built-in default world: coloured squares and discs bouncing in a box.

Coordinates are (row, col) in pixel units with pixel (i, j) centred at (i, j),
so the frame covers [-0.5, size - 0.5] on both axes.

With `occluders` (off by default), fixed opaque grey rectangles are drawn over the
objects, which pass behind them: an object hidden for several frames must come back
with its colour, shape and motion, which two frames of history cannot give (the
default world is nearly Markov: two frames give position and velocity).
"""

import dataclasses

import numpy as np

SHAPE_NAMES = ("square", "disc")

# Saturated primaries and secondaries: every channel is at an extreme, so each
# colour is a distinct direction from the black background and clips can be
# segmented by hue even where edges are anti-aliased.
DEFAULT_PALETTE = (
    (1.0, -1.0, -1.0),  # red
    (-1.0, 1.0, -1.0),  # green
    (-1.0, -1.0, 1.0),  # blue
    (1.0, 1.0, -1.0),  # yellow
    (1.0, -1.0, 1.0),  # magenta
    (-1.0, 1.0, 1.0),  # cyan
)

BACKGROUND = -1.0
# Mid grey: as far from the black background as from every palette colour (distance
# sqrt(3) in RGB), so the object detector (eval/objects.py) assigns it to nothing.
OCCLUDER_COLOR = (0.0, 0.0, 0.0)


def reflect_trajectories(
    start: np.ndarray, velocity: np.ndarray, low: float, high: float, num_frames: int
) -> np.ndarray:
    """Constant-velocity motion with elastic reflection off walls at low and high.

    start and velocity are [K, 2]; returns float64 [num_frames, K, 2]. Frame t is
    computed in closed form from t alone (unfolding the reflections as a
    triangle wave), so a shorter clip is bit-exactly a prefix of a longer one.
    """
    frames = np.arange(num_frames, dtype=np.float64)[:, None, None]
    span = high - low
    unfolded = np.mod(start - low + velocity * frames, 2.0 * span)
    return low + np.where(unfolded <= span, unfolded, 2.0 * span - unfolded)


def random_motion(
    rng: np.random.Generator,
    count: int,
    low: float,
    high: float,
    min_speed: float,
    max_speed: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Uniform start positions in [low, high]^2 and uniform speed and heading."""
    start = rng.uniform(low, high, size=(count, 2))
    speed = rng.uniform(min_speed, max_speed, size=count)
    heading = rng.uniform(0.0, 2.0 * np.pi, size=count)
    velocity = speed[:, None] * np.stack([np.sin(heading), np.cos(heading)], axis=-1)
    return start, velocity


def _interval_overlap(centres: np.ndarray, half_extent: float, size: int) -> np.ndarray:
    """Length of [c - h, c + h] covered by each unit pixel interval: [..., size]."""
    pixel = np.arange(size, dtype=np.float64)
    centres = centres[..., None]
    upper = np.minimum(pixel + 0.5, centres + half_extent)
    lower = np.maximum(pixel - 0.5, centres - half_extent)
    return np.clip(upper - lower, 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class BouncingWorld:
    """A few coloured objects moving at constant velocity inside a black box.

    Objects reflect elastically off the walls, pass through each other, and
    later objects are drawn on top. Edges are anti-aliased by pixel coverage so
    sub-pixel motion is visible and the rendered centroid matches the true centre.

    occluders: fixed rectangles (top, left, height, width) in whole pixels, drawn
    opaque in OCCLUDER_COLOR over the objects; empty (the default) draws none.
    """

    size: int = 32
    num_objects: int = 2
    radius: float = 3.5
    min_speed: float = 1.0
    max_speed: float = 2.0
    palette: tuple[tuple[float, float, float], ...] = DEFAULT_PALETTE
    shapes: tuple[str, ...] = SHAPE_NAMES
    occluders: tuple[tuple[int, int, int, int], ...] = ()

    def __post_init__(self):
        if not isinstance(self.occluders, (tuple, list)) or not all(
            self._fits(box) for box in self.occluders
        ):
            raise ValueError(
                f"BouncingWorld.occluders={self.occluders} must be (top, left, height, width)"
                f" rectangles of whole pixels inside the {self.size}x{self.size} frame"
            )
        # A config may give lists (JSON): kept as tuples, so that the world stays hashable.
        object.__setattr__(
            self, "occluders", tuple(tuple(int(v) for v in box) for box in self.occluders)
        )
        if self.size < 4:
            raise ValueError(f"BouncingWorld.size={self.size} must be at least 4")
        if not 0 < self.radius:
            raise ValueError(f"BouncingWorld.radius={self.radius} must be positive")
        if 2 * self.radius >= self.size - 1:
            raise ValueError(
                f"BouncingWorld.radius={self.radius} leaves no room to move in size={self.size}"
            )
        if not 0 <= self.min_speed <= self.max_speed:
            raise ValueError(
                f"BouncingWorld.min_speed={self.min_speed} and max_speed={self.max_speed}"
                " must satisfy 0 <= min_speed <= max_speed"
            )
        palette = np.asarray(self.palette, dtype=np.float64)
        if palette.ndim != 2 or palette.shape[1] != 3 or np.abs(palette).max() > 1:
            raise ValueError("BouncingWorld.palette must be RGB triples in [-1, 1]")
        if len(np.unique(palette, axis=0)) != len(palette):
            raise ValueError("BouncingWorld.palette has repeated colours")
        if np.any(np.all(palette == BACKGROUND, axis=1)):
            raise ValueError("BouncingWorld.palette contains the black background colour")
        if not 1 <= self.num_objects <= len(palette):
            raise ValueError(
                f"BouncingWorld.num_objects={self.num_objects} must be in"
                f" [1, len(palette)={len(palette)}] so every object gets its own colour"
            )
        if not self.shapes or not set(self.shapes) <= set(SHAPE_NAMES):
            raise ValueError(
                f"BouncingWorld.shapes={self.shapes} must be a non-empty subset of {SHAPE_NAMES}"
            )

    def _fits(self, box) -> bool:
        """Whether `box` is (top, left, height, width), integers, inside the frame."""
        if not isinstance(box, (tuple, list)) or len(box) != 4:
            return False
        if not all(isinstance(v, (int, np.integer)) for v in box):
            return False
        top, left, height, width = box
        return (height >= 1 and width >= 1 and top >= 0 and left >= 0
                and top + height <= self.size and left + width <= self.size)

    def palette_array(self) -> np.ndarray:
        return np.asarray(self.palette, dtype=np.float32)

    @property
    def position_bounds(self) -> tuple[float, float]:
        """Range of object centres that keeps every object wholly inside the frame."""
        return self.radius - 0.5, self.size - 0.5 - self.radius

    def occluder_mask(self) -> np.ndarray:
        """bool [H, W]: the pixels the occluders cover (none without occluders)."""
        mask = np.zeros((self.size, self.size), bool)
        for top, left, height, width in self.occluders:
            mask[top : top + height, left : left + width] = True
        return mask

    def clip(self, seed: int, index: int, num_frames: int) -> dict[str, np.ndarray]:
        """Clip `index` of the stream `seed`.

        Returns video float32 [F, H, W, 3] in [-1, 1], positions float32 [F, K, 2]
        (row, col of each centre), color_ids int32 [K] into the palette, shapes
        int32 [K] into SHAPE_NAMES and visible float32 [F, K]: the fraction of each
        object's own coverage that shows in the frame, not hidden by the occluders
        or by the objects drawn over it (1: all of it; 0: hidden). All randomness is
        drawn before the frame count is used, so the clip is a prefix of the same
        clip with more frames.
        """
        rng = np.random.default_rng([seed, index])
        color_ids = rng.choice(len(self.palette), size=self.num_objects, replace=False)
        allowed_shapes = np.array([SHAPE_NAMES.index(name) for name in self.shapes])
        shapes = allowed_shapes[rng.integers(len(allowed_shapes), size=self.num_objects)]
        low, high = self.position_bounds
        start, velocity = random_motion(
            rng, self.num_objects, low, high, self.min_speed, self.max_speed
        )
        positions = reflect_trajectories(start, velocity, low, high, num_frames)
        video, visible = self._render(positions, color_ids, shapes)
        return {
            "video": video,
            "positions": positions.astype(np.float32),
            "color_ids": color_ids.astype(np.int32),
            "shapes": shapes.astype(np.int32),
            "visible": visible,
        }

    def _render(
        self, positions: np.ndarray, color_ids: np.ndarray, shapes: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Composites the objects over black, then the occluders over them; positions
        [F, K, 2] -> video [F, H, W, 3] and the visible fraction of each object [F, K]."""
        rows, cols = positions[..., 0], positions[..., 1]
        # Exact box coverage is separable: row overlap times column overlap.
        square_alpha = (
            _interval_overlap(rows, self.radius, self.size)[..., :, None]
            * _interval_overlap(cols, self.radius, self.size)[..., None, :]
        )
        pixel = np.arange(self.size, dtype=np.float64)
        distance = np.sqrt(
            (pixel[:, None] - rows[..., None, None]) ** 2
            + (pixel[None, :] - cols[..., None, None]) ** 2
        )
        # A one-pixel linear ramp across the rim approximates disc coverage.
        disc_alpha = np.clip(self.radius + 0.5 - distance, 0.0, 1.0)
        is_disc = (shapes == SHAPE_NAMES.index("disc"))[None, :, None, None]
        alpha = np.where(is_disc, disc_alpha, square_alpha)[..., None]  # [F, K, H, W, 1]

        colors = np.asarray(self.palette, dtype=np.float64)[color_ids]
        num_frames = positions.shape[0]
        video = np.full((num_frames, self.size, self.size, 3), BACKGROUND)
        for k in range(self.num_objects):
            video = video * (1.0 - alpha[:, k]) + colors[k] * alpha[:, k]
        # What of object k shows: its coverage, times what every later object and the
        # occluders leave of it.
        mask = self.occluder_mask()
        shown = alpha[..., 0] * (1.0 - mask)
        for k in range(self.num_objects - 1):
            shown[:, k] *= np.prod(1.0 - alpha[:, k + 1 :, ..., 0], axis=1)
        visible = shown.sum(axis=(-2, -1)) / alpha[..., 0].sum(axis=(-2, -1))
        video[:, mask] = OCCLUDER_COLOR
        return video.astype(np.float32), visible.astype(np.float32)
