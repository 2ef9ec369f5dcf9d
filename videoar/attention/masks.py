"""Attention masks as small hashable values at frame granularity.

A mask spec says which key frames each query frame may attend to. Every spec is a frozen
dataclass (hashable, so it can be a static argument of a jitted function) with
`frame_mask()`: a static numpy [Fq, Fk] bool array, and `to_dense(tokens_per_frame)`: the
token-level [Fq*T, Fk*T] form used by the reference attention. Frames are grouped into chunks
of `chunk` frames: frames of one chunk are generated together, so they see each other.

`own_frame_mask()` ([Fq, Fk] bool, within `frame_mask()`) marks the key frames of a query
frame's own chunk, which history routing (routing.py) always keeps; the other allowed key frames,
`frame_mask() & ~own_frame_mask()`, are the history it routes over.

Layouts:
  BlockCausal(n)         frame i sees frames in chunks <= chunk(i)   (Diffusion Forcing, cache writes)
  TeacherForcing(n)      2n frames [history x^1..x^n ; noisy x_t^1..x_t^n]: history i sees history
                         in chunks <= chunk(i); noisy i sees history in chunks < chunk(i) and the
                         noisy frames of its own chunk, never another chunk's noisy frames.
  Full(n)                every frame sees every frame (bidirectional teacher, cached sampling).
  SlidingWindow(n, w, s) block-causal restricted to the last w chunks, plus the first s sink frames.

History window and sink (spec §6): BlockCausal and TeacherForcing take `window` (> 0: a frame's
history is limited to the `window` chunks before its own) and `sink` (with a window: the first
`sink` frames stay in every later frame's history). That is what the sampler's rolling KV cache
of `sink + window * chunk` frames shows each chunk (models/kv_cache.py), so a model trained under
it has seen every view sampling gives it, past the training length too. The extrapolation trick
(spec §6.2-6.3) on N-frame clips is window = (N - sink) / chunk - 2: a chunk sees at most
N - chunk frames, its own included, so only the last chunk loses anything, the chunk right after
the sink (chunk 0 without a sink); every chunk sampled past N sees what that last chunk sees.
"""

from __future__ import annotations

import dataclasses

import numpy as np


def _check_positive(name: str, value: int) -> None:
  if value < 1:
    raise ValueError(f"{name}={value} must be >= 1")


class MaskSpec:
  """Base of the mask specs: subclasses define `frame_mask`."""

  num_frames: int

  def frame_mask(self) -> np.ndarray:
    raise NotImplementedError

  def own_frame_mask(self) -> np.ndarray:
    raise NotImplementedError

  def to_dense(self, tokens_per_frame: int) -> np.ndarray:
    t = tokens_per_frame
    return np.repeat(np.repeat(self.frame_mask(), t, axis=0), t, axis=1)



def diagonal_chunk(mask: MaskSpec) -> int:
  """c > 0 if `mask` is square and each chunk of c frames sees exactly its own frames
  (SlidingWindow(n, 1, chunk=c): a FineDecoder's frames; c = n for a square mask that allows
  everything); 0 otherwise. Attention under such a mask is a batch of independent Full(c)
  attentions."""
  allowed = mask.frame_mask()
  n = allowed.shape[0]
  chunk = int(allowed[0].sum())
  if allowed.shape != (n, n) or not chunk or n % chunk:
    return 0
  return chunk if np.array_equal(allowed, _same_chunk(n, chunk)) else 0


def _chunk_ids(num_frames: int, chunk: int) -> np.ndarray:
  return np.arange(num_frames) // chunk


def _same_chunk(num_frames: int, chunk: int) -> np.ndarray:
  c = _chunk_ids(num_frames, chunk)
  return c[:, None] == c[None, :]


@dataclasses.dataclass(frozen=True)
class _ChunkedHistory(MaskSpec):
  """`num_frames` frames in chunks of `chunk`; `window` > 0 limits each chunk's history to the
  `window` chunks before its own plus the first `sink` frames, as a KV cache of that many chunks
  with a sink does in sampling (module docstring).

  Raises ValueError for a negative window, a sink that is not a multiple of the chunk, or a sink
  without a window."""

  num_frames: int
  chunk: int = 1
  window: int = 0
  sink: int = 0

  def __post_init__(self):
    _check_positive("num_frames", self.num_frames)
    _check_positive("chunk", self.chunk)
    if self.window < 0:
      raise ValueError(f"window={self.window} must be >= 0 (0: unlimited)")
    if self.sink < 0 or self.sink % self.chunk:
      raise ValueError(f"sink={self.sink} must be >= 0 and a multiple of chunk={self.chunk}: the"
                       " cache keeps or evicts whole chunks")
    if self.sink and not self.window:
      raise ValueError(f"sink={self.sink} needs a window > 0: unlimited history already sees the"
                       " first frames")

  def _within_reach(self) -> np.ndarray:
    """[F, F] bool, causality aside: key frame j lies in the `window` chunks before query frame
    i's own (any chunk when window = 0), in i's own chunk or later, or among the first `sink`
    frames."""
    if not self.window:
      return np.ones((self.num_frames, self.num_frames), bool)
    c = _chunk_ids(self.num_frames, self.chunk)
    in_sink = np.arange(self.num_frames)[None, :] < self.sink
    return (c[:, None] - c[None, :] <= self.window) | in_sink


@dataclasses.dataclass(frozen=True)
class BlockCausal(_ChunkedHistory):
  """Each chunk sees its own chunk and the chunks before it (within `window`, plus the `sink`);
  BlockCausal(n, c, w, s) equals SlidingWindow(n, w + 1, s, c). Raises ValueError for a
  negative window, a sink that is not a multiple of the chunk, or a sink without a window."""

  def frame_mask(self) -> np.ndarray:
    c = _chunk_ids(self.num_frames, self.chunk)
    reach = self._within_reach()
    return (c[:, None] >= c[None, :]) & reach

  def own_frame_mask(self) -> np.ndarray:
    return _same_chunk(self.num_frames, self.chunk)


@dataclasses.dataclass(frozen=True)
class TeacherForcing(_ChunkedHistory):
  """The 2N layout; `num_frames` is N (the video length), the sequence holds 2N frames.

  `window` and `sink` limit the history of history and noisy frames alike, as a KV cache of
  `window` chunks with a sink does in sampling (the sliding-window baseline of routing). Raises
  ValueError for a negative window, a sink that is not a multiple of the chunk, or a sink
  without a window."""

  def frame_mask(self) -> np.ndarray:
    c = _chunk_ids(self.num_frames, self.chunk)
    distance = c[:, None] - c[None, :]
    in_window = self._within_reach()
    history_sees_history = (distance >= 0) & in_window
    noisy_sees_history = (distance > 0) & in_window
    noisy_sees_noisy = c[:, None] == c[None, :]
    none = np.zeros_like(history_sees_history)
    return np.block([[history_sees_history, none], [noisy_sees_history, noisy_sees_noisy]])

  def own_frame_mask(self) -> np.ndarray:
    """History frames own their history chunk, noisy frames their noisy chunk."""
    same = _same_chunk(self.num_frames, self.chunk)
    none = np.zeros_like(same)
    return np.block([[same, none], [none, same]])


@dataclasses.dataclass(frozen=True)
class Full(MaskSpec):
  """`num_kv_frames` (default: square) lets a chunk of queries see a KV cache plus itself."""

  num_frames: int
  num_kv_frames: int | None = None

  def __post_init__(self):
    _check_positive("num_frames", self.num_frames)

  def frame_mask(self) -> np.ndarray:
    kv = self.num_frames if self.num_kv_frames is None else self.num_kv_frames
    return np.ones((self.num_frames, kv), bool)

  def own_frame_mask(self) -> np.ndarray:
    """The chunk's own frames, which follow the cache frames in the keys."""
    kv = self.num_frames if self.num_kv_frames is None else self.num_kv_frames
    if kv <= self.num_frames:
      raise ValueError(
          f"{self} has no history frames: routing over a Full mask needs a KV cache before the"
          " chunk (num_kv_frames > num_frames); a bidirectional Full mask cannot be routed")
    own = np.zeros((self.num_frames, kv), bool)
    own[:, kv - self.num_frames:] = True
    return own


@dataclasses.dataclass(frozen=True)
class SlidingWindow(MaskSpec):
  """Block-causal over the last `window` chunks (own chunk included) plus `sink` first frames."""

  num_frames: int
  window: int
  sink: int = 0
  chunk: int = 1

  def __post_init__(self):
    _check_positive("num_frames", self.num_frames)
    _check_positive("window", self.window)
    _check_positive("chunk", self.chunk)
    if self.sink < 0:
      raise ValueError(f"sink={self.sink} must be >= 0")

  def frame_mask(self) -> np.ndarray:
    c = _chunk_ids(self.num_frames, self.chunk)
    causal = c[:, None] >= c[None, :]
    recent = c[:, None] - c[None, :] < self.window
    is_sink = np.arange(self.num_frames)[None, :] < self.sink
    return causal & (recent | is_sink)

  def own_frame_mask(self) -> np.ndarray:
    return _same_chunk(self.num_frames, self.chunk)
