"""Per-frame image metrics (PSNR, SSIM), in numpy.

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
