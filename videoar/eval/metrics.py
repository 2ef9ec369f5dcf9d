"""Per-frame image metrics and drift statistics, in numpy.

Frames are arrays [..., H, W, C] with values in [-1, 1] (so the default data range is 2); every
metric returns one value per frame, shaped like the leading axes [...].
"""

import numpy as np

SSIM_WINDOW_SIZE = 7
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def psnr(pred: np.ndarray, true: np.ndarray, data_range: float = 2.0) -> np.ndarray:
    """Peak signal-to-noise ratio in dB per frame, [..., H, W, C] -> [...]; inf where identical."""
    error = np.asarray(pred, np.float64) - np.asarray(true, np.float64)
    mse = np.mean(np.square(error), axis=(-3, -2, -1))
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(data_range**2 / mse)


def _gaussian_taps(size: int = SSIM_WINDOW_SIZE, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """Normalised 1-D Gaussian taps; SSIM uses their outer product as the 2-D window."""
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    taps = np.exp(-0.5 * (offsets / sigma) ** 2)
    return taps / taps.sum()


def _filter_valid(images: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable 2-D weighted average over [..., H, W, C], keeping only positions where the whole
    window lies inside the image (Wang et al.'s 'valid' SSIM), so no padding rule biases edges."""
    size = len(taps)
    out_h = images.shape[-3] - size + 1
    out_w = images.shape[-2] - size + 1
    rows = sum(w * images[..., i : i + out_h, :, :] for i, w in enumerate(taps))
    return sum(w * rows[..., :, i : i + out_w, :] for i, w in enumerate(taps))


def ssim(pred: np.ndarray, true: np.ndarray, data_range: float = 2.0) -> np.ndarray:
    """Structural similarity per frame, [..., H, W, C] -> [...].

    Standard SSIM (Wang et al. 2004): Gaussian window of 7 px with sigma 1.5, K1 = 0.01,
    K2 = 0.03, weighted (population) statistics, evaluated where the window fits inside the
    frame, averaged over those positions and over channels.
    """
    x = np.asarray(pred, np.float64)
    y = np.asarray(true, np.float64)
    if x.shape[-3] < SSIM_WINDOW_SIZE or x.shape[-2] < SSIM_WINDOW_SIZE:
        raise ValueError(
            f"ssim needs frames of at least {SSIM_WINDOW_SIZE}x{SSIM_WINDOW_SIZE}, got {x.shape[-3:-1]}"
        )
    taps = _gaussian_taps()
    mu_x = _filter_valid(x, taps)
    mu_y = _filter_valid(y, taps)
    var_x = _filter_valid(x * x, taps) - mu_x**2
    var_y = _filter_valid(y * y, taps) - mu_y**2
    cov_xy = _filter_valid(x * y, taps) - mu_x * mu_y
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    numerator = (2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
    denominator = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return (numerator / denominator).mean(axis=(-3, -2, -1))


def _intensity_histograms(frames: np.ndarray, bins: int, value_range: tuple[float, float]) -> np.ndarray:
    """Normalised histogram of all channel values of each frame, [..., H, W, C] -> [..., bins].

    Values outside value_range fall into the edge bins, so a model that overshoots still has a
    histogram that sums to one and is penalised for mass at the extremes."""
    low, high = value_range
    values = np.asarray(frames, np.float64)
    leading = values.shape[:-3]
    values = values.reshape(-1, int(np.prod(values.shape[-3:])))
    bin_index = np.clip(np.floor((values - low) / (high - low) * bins), 0, bins - 1).astype(np.int64)
    # One bincount over all frames at once: frame f's bins are offset to f * bins.
    flat_index = bin_index + bins * np.arange(values.shape[0])[:, None]
    counts = np.bincount(flat_index.ravel(), minlength=values.shape[0] * bins)
    histograms = counts.reshape(values.shape[0], bins) / values.shape[1]
    return histograms.reshape(*leading, bins)


def intensity_histogram_distance(
    frames: np.ndarray,
    reference_frames: np.ndarray,
    bins: int = 32,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> np.ndarray:
    """L1 distance, in [0, 2], between each frame's intensity histogram and the pooled histogram
    of all reference frames (e.g. real data): frames [..., H, W, C] -> [...].

    Intensities are the individual channel values; a growing distance over time shows colour or
    brightness drift even when the content no longer matches the truth pixel by pixel.
    """
    frame_histograms = _intensity_histograms(frames, bins, value_range)
    reference = np.asarray(reference_frames)
    pooled = reference.reshape(-1, *reference.shape[-3:])
    reference_histogram = _intensity_histograms(pooled, bins, value_range).mean(axis=0)
    return np.abs(frame_histograms - reference_histogram).sum(axis=-1)


def frame_difference_energy(frames: np.ndarray) -> np.ndarray:
    """Mean squared difference between consecutive frames, [..., F, H, W, C] -> [..., F - 1].

    Near zero means the video froze; far above the data's own level means flicker or blow-up."""
    values = np.asarray(frames, np.float64)
    return np.mean(np.square(np.diff(values, axis=-4)), axis=(-3, -2, -1))
