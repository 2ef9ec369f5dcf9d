"""The streaming autoregressive sampler.

Frames are generated in chunks of `chunk` frames. Each chunk starts from its own start point
(noise, or for Resampling Forcing a partly noised frame), is integrated with Euler steps while
attending to the KV cache of earlier clean frames, and is then run once more at t = 0 to write its
keys and values into the cache. The cache is a ring buffer of `window - chunk` frames, so the
model never sees more history, nor larger positions, than in training; generation can go on past
the training length.

`rollout` scans this chunk step over a whole video (used by evaluation and by Resampling
Forcing's self-resampling); `stream` calls the same jitted chunk step from the host and yields
each chunk as soon as it is done.
"""

from __future__ import annotations

import functools
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from videoar.attention import masks
from videoar.diffusion import flow
from videoar.models import dit
from videoar.models import kv_cache as kv_cache_lib


def window_frames(num_frames: int, chunk: int, history_window: int = 0) -> int:
  """Frames a chunk sees in sampling (cache + itself): as many as in training, where a
  `history_window` > 0 limits the history to that many chunks."""
  if history_window:
    return min(num_frames, (history_window + 1) * chunk)
  return num_frames


class Sampler:
  """Autoregressive chunked sampling with a KV cache.

  Args:
    model: the CausalDiT.
    frame_shape: (H, W, C).
    chunk: frames generated together (1 = frame-wise).
    window: frames the model saw in training; the cache holds `window - chunk` of them.
    guidance_scale: classifier-free guidance on the model's conditioning: class label, actions,
      text (1 = off).
  """

  def __init__(self, model: dit.CausalDiT, *, frame_shape: tuple[int, int, int], chunk: int,
               window: int, guidance_scale: float = 1.0):
    if window % chunk:
      raise ValueError(f"sampler window={window} must be a multiple of chunk={chunk}")
    self.model = model
    self.frame_shape = tuple(frame_shape)
    self.chunk = chunk
    self.slots = window - chunk
    self.guidance_scale = guidance_scale
    self.guided = guidance_scale != 1.0 and bool(model.conditioning_keys())
    self._jit_chunk_step = jax.jit(self.chunk_step)
    self._jit_prefill = jax.jit(self.prefill)

  # --- building blocks -------------------------------------------------------------------------

  def init_cache(self, batch: int) -> kv_cache_lib.KVCache:
    h, w, _ = self.frame_shape
    m = self.model
    return kv_cache_lib.init(
        num_layers=m.depth, batch=batch * (2 if self.guided else 1), slots=self.slots,
        tokens_per_frame=m.tokens_per_frame(h, w), num_heads=m.num_heads, head_dim=m.head_dim,
        frame_shape=self.frame_shape, dtype=m.dtype)

  def _apply(self, params, cache, x_bchwc, t_bc, previous_bchwc, cond):
    """One model call on a chunk over the cache; inputs are per video, and under guidance they
    are doubled here: conditional, then null conditioning."""
    cond = cond or {}
    if self.guided:
      x_bchwc, t_bc, previous_bchwc = (jnp.concatenate([a, a])
                                       for a in (x_bchwc, t_bc, previous_bchwc))
      null = self.model.null_conditioning(cond)
      cond = {key: jnp.concatenate([value, null[key]]) for key, value in cond.items()}
    c = x_bchwc.shape[1]
    return self.model.apply(
        params, x_bchwc, t_bc, frame_pos_f=kv_cache_lib.query_positions(cache, c),
        mask=masks.Full(c, self.slots + c),
        previous_bfhwc=previous_bchwc if self.model.previous_frame_input else None, cache=cache,
        **cond)

  def _cache_rows(self, cache_array):
    """The rows of a (possibly CFG-doubled) cache array that belong to the conditional pass."""
    return jnp.split(cache_array, 2)[0] if self.guided else cache_array

  def velocity(self, params, cache, x_bchwc, t_bc, cond=None):
    last = self._cache_rows(cache.last_frame)[:, None]
    previous = jnp.broadcast_to(last, x_bchwc.shape)
    v, _ = self._apply(params, cache, x_bchwc, t_bc, previous, cond)
    if not self.guided:
      return v
    v_cond, v_null = jnp.split(v, 2)
    return v_null + self.guidance_scale * (v_cond - v_null)

  def denoise_chunk(self, params, cache, x_start_bchwc, times_bs, cond=None):
    """Euler integration of one chunk over per-video time grids times_bs [B, steps + 1].

    `cond` holds the model's conditioning arguments (CausalDiT.conditioning), per-frame ones
    for this chunk's frames."""
    c = x_start_bchwc.shape[1]

    def step(i, x):
      t_now = jnp.broadcast_to(times_bs[:, i, None], (x.shape[0], c))
      t_next = jnp.broadcast_to(times_bs[:, i + 1, None], (x.shape[0], c))
      v = self.velocity(params, cache, x, t_now, cond)
      return flow.euler_step(x, v, t_now, t_next)

    return jax.lax.fori_loop(0, times_bs.shape[1] - 1, step, x_start_bchwc)

  def write_chunk(self, params, cache, x0_bchwc, cond=None):
    """Runs the clean chunk at t = 0 and appends its keys and values to the cache."""
    t0 = jnp.zeros(x0_bchwc.shape[:2], jnp.float32)
    last = self._cache_rows(cache.last_frame)[:, None]
    previous = jnp.concatenate([last, x0_bchwc[:, :-1]], axis=1)
    _, (k, v) = self._apply(params, cache, x0_bchwc, t0, previous, cond)
    if self.guided:
      x0_bchwc = jnp.concatenate([x0_bchwc, x0_bchwc])
    return kv_cache_lib.write(cache, k, v, x0_bchwc)

  def chunk_step(self, params, cache, x_start_bchwc, times_bs, cond=None):
    x0 = self.denoise_chunk(params, cache, x_start_bchwc, times_bs, cond)
    return x0, self.write_chunk(params, cache, x0, cond)

  # --- whole videos ----------------------------------------------------------------------------

  def _check_whole_chunks(self, num_frames: int) -> None:
    """Raises ValueError unless `num_frames` frames make whole chunks."""
    if num_frames % self.chunk:
      raise ValueError(f"{num_frames} frames are not a multiple of chunk={self.chunk}")

  def _chunks(self, x_bf):
    """[B, F, ...] -> [F / chunk, B, chunk, ...] for scanning."""
    b, f = x_bf.shape[:2]
    self._check_whole_chunks(f)
    return jnp.moveaxis(x_bf.reshape((b, f // self.chunk, self.chunk) + x_bf.shape[2:]), 1, 0)

  def _unchunk(self, x_nbc):
    x = jnp.moveaxis(x_nbc, 0, 1)
    return x.reshape((x.shape[0], -1) + x.shape[3:])

  def _per_frame(self, cond):
    """`cond` split into (per-video entries, per-frame entries chunked for scanning)."""
    per_video = {k: v for k, v in cond.items() if k not in dit.PER_FRAME_CONDITIONING}
    per_frame = {k: self._chunks(v) for k, v in cond.items() if k in dit.PER_FRAME_CONDITIONING}
    return per_video, per_frame

  def prefill(self, params, cache, context_bfhwc, cond=None):
    """Writes given clean frames (a prompt) into the cache, chunk by chunk."""
    per_video, per_frame = self._per_frame(cond or {})

    def body(cache, xs):
      x0, chunk_cond = xs
      return self.write_chunk(params, cache, x0, per_video | chunk_cond), None

    cache, _ = jax.lax.scan(body, cache, (self._chunks(context_bfhwc), per_frame))
    return cache

  def rollout(self, params, cache, x_start_bfhwc, times_bs, cond=None):
    """Generates len(x_start) frames after what the cache holds; returns (frames, cache)."""
    per_video, per_frame = self._per_frame(cond or {})

    def body(cache, xs):
      x_start, chunk_cond = xs
      x0, cache = self.chunk_step(params, cache, x_start, times_bs, per_video | chunk_cond)
      return cache, x0

    cache, frames = jax.lax.scan(body, cache, (self._chunks(x_start_bfhwc), per_frame))
    return self._unchunk(frames), cache

  def _start(self, prefill, params, batch, num_steps, time_shift, context_bfhwc, cond):
    """An empty cache with the context prefilled, the context length, and the Euler grid."""
    cache = self.init_cache(batch)
    num_context = 0
    if context_bfhwc is not None:
      num_context = context_bfhwc.shape[1]
      cache = prefill(params, cache, context_bfhwc, _frames(cond, 0, num_context))
    times = jnp.broadcast_to(flow.step_times(num_steps, time_shift), (batch, num_steps + 1))
    return cache, num_context, times

  @functools.partial(jax.jit, static_argnums=(0, 3, 4, 5))
  def generate(self, params, rng, num_frames: int, num_steps: int, time_shift: float,
               context_bfhwc=None, cond=None):
    """Generates `num_frames` frames from noise after an optional clean context.

    `cond`: the model's conditioning arguments (CausalDiT.conditioning); per-frame ones
    (actions) cover context and generated frames."""
    cond = cond or {}
    batch = _batch_size(context_bfhwc, cond, 1)
    cache, num_context, times = self._start(self.prefill, params, batch, num_steps, time_shift,
                                            context_bfhwc, cond)
    noise = jax.random.normal(rng, (batch, num_frames) + self.frame_shape)
    frames, _ = self.rollout(params, cache, noise, times,
                             _frames(cond, num_context, num_context + num_frames))
    return frames

  def stream(self, params, rng, num_frames: int, num_steps: int, time_shift: float,
             context_bfhwc=None, cond=None, batch: int = 1) -> Iterator[np.ndarray]:
    """An iterator over the chunks [B, chunk, H, W, C], each as soon as it is generated; one
    compiled chunk step.

    Raises ValueError, on the call and before compiling, unless `num_frames` is a multiple of
    the chunk (as generate does)."""
    self._check_whole_chunks(num_frames)
    return self._stream(params, rng, num_frames, num_steps, time_shift, context_bfhwc, cond, batch)

  def _stream(self, params, rng, num_frames, num_steps, time_shift, context_bfhwc, cond, batch):
    """The generator behind stream(), which checks its arguments first: a generator's body runs
    only when the first chunk is asked for."""
    cond = cond or {}
    batch = _batch_size(context_bfhwc, cond, batch)
    cache, num_context, times = self._start(self._jit_prefill, params, batch, num_steps,
                                            time_shift, context_bfhwc, cond)
    for i in range(num_frames // self.chunk):
      rng, noise_rng = jax.random.split(rng)
      noise = jax.random.normal(noise_rng, (batch, self.chunk) + self.frame_shape)
      start = num_context + i * self.chunk
      x0, cache = self._jit_chunk_step(params, cache, noise, times,
                                       _frames(cond, start, start + self.chunk))
      yield np.asarray(x0)


def _frames(cond: dict, start: int, stop: int) -> dict:
  """`cond` with its per-frame entries cut to frames [start, stop)."""
  return {key: value[:, start:stop] if key in dit.PER_FRAME_CONDITIONING else value
          for key, value in cond.items()}


def _batch_size(context_bfhwc, cond: dict, default: int) -> int:
  if context_bfhwc is not None:
    return context_bfhwc.shape[0]
  return next((value.shape[0] for value in cond.values()), default)
