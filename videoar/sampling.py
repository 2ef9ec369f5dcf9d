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
    guidance_scale: classifier-free guidance on the class label and actions (1 = off).
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
    self.guided = guidance_scale != 1.0 and bool(model.num_classes or model.num_actions)
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

  def _model_inputs(self, labels_b, actions_bc):
    """Conditioning for one model call; doubled (conditional, then null) under guidance."""
    if not self.guided:
      return labels_b, actions_bc
    m = self.model
    if labels_b is not None:
      labels_b = jnp.concatenate([labels_b, jnp.full_like(labels_b, m.num_classes)])
    if actions_bc is not None:
      actions_bc = jnp.concatenate([actions_bc, jnp.full_like(actions_bc, m.num_actions)])
    return labels_b, actions_bc

  def _apply(self, params, cache, x_bchwc, t_bc, previous_bchwc, labels_b, actions_bc):
    """One model call on a chunk over the cache; inputs are per video (doubled here for CFG)."""
    if self.guided:
      x_bchwc, t_bc, previous_bchwc = (jnp.concatenate([a, a])
                                       for a in (x_bchwc, t_bc, previous_bchwc))
    labels_b, actions_bc = self._model_inputs(labels_b, actions_bc)
    c = x_bchwc.shape[1]
    return self.model.apply(
        params, x_bchwc, t_bc, frame_pos_f=kv_cache_lib.query_positions(cache, c),
        mask=masks.Full(c, self.slots + c), labels_b=labels_b, actions_bf=actions_bc,
        previous_bfhwc=previous_bchwc if self.model.previous_frame_input else None, cache=cache)

  def _cache_rows(self, cache_array):
    """The rows of a (possibly CFG-doubled) cache array that belong to the conditional pass."""
    return jnp.split(cache_array, 2)[0] if self.guided else cache_array

  def velocity(self, params, cache, x_bchwc, t_bc, labels_b=None, actions_bc=None):
    last = self._cache_rows(cache.last_frame)[:, None]
    previous = jnp.broadcast_to(last, x_bchwc.shape)
    v, _ = self._apply(params, cache, x_bchwc, t_bc, previous, labels_b, actions_bc)
    if not self.guided:
      return v
    v_cond, v_null = jnp.split(v, 2)
    return v_null + self.guidance_scale * (v_cond - v_null)

  def denoise_chunk(self, params, cache, x_start_bchwc, times_bs, labels_b=None, actions_bc=None):
    """Euler integration of one chunk over per-video time grids times_bs [B, steps + 1]."""
    c = x_start_bchwc.shape[1]

    def step(i, x):
      t_now = jnp.broadcast_to(times_bs[:, i, None], (x.shape[0], c))
      t_next = jnp.broadcast_to(times_bs[:, i + 1, None], (x.shape[0], c))
      v = self.velocity(params, cache, x, t_now, labels_b, actions_bc)
      return flow.euler_step(x, v, t_now, t_next)

    return jax.lax.fori_loop(0, times_bs.shape[1] - 1, step, x_start_bchwc)

  def write_chunk(self, params, cache, x0_bchwc, labels_b=None, actions_bc=None):
    """Runs the clean chunk at t = 0 and appends its keys and values to the cache."""
    t0 = jnp.zeros(x0_bchwc.shape[:2], jnp.float32)
    last = self._cache_rows(cache.last_frame)[:, None]
    previous = jnp.concatenate([last, x0_bchwc[:, :-1]], axis=1)
    _, (k, v) = self._apply(params, cache, x0_bchwc, t0, previous, labels_b, actions_bc)
    if self.guided:
      x0_bchwc = jnp.concatenate([x0_bchwc, x0_bchwc])
    return kv_cache_lib.write(cache, k, v, x0_bchwc)

  def chunk_step(self, params, cache, x_start_bchwc, times_bs, labels_b=None, actions_bc=None):
    x0 = self.denoise_chunk(params, cache, x_start_bchwc, times_bs, labels_b, actions_bc)
    return x0, self.write_chunk(params, cache, x0, labels_b, actions_bc)

  # --- whole videos ----------------------------------------------------------------------------

  def _chunks(self, x_bf):
    """[B, F, ...] -> [F / chunk, B, chunk, ...] for scanning."""
    b, f = x_bf.shape[:2]
    if f % self.chunk:
      raise ValueError(f"{f} frames are not a multiple of chunk={self.chunk}")
    return jnp.moveaxis(x_bf.reshape((b, f // self.chunk, self.chunk) + x_bf.shape[2:]), 1, 0)

  def _unchunk(self, x_nbc):
    x = jnp.moveaxis(x_nbc, 0, 1)
    return x.reshape((x.shape[0], -1) + x.shape[3:])

  def prefill(self, params, cache, context_bfhwc, labels_b=None, actions_bf=None):
    """Writes given clean frames (a prompt) into the cache, chunk by chunk."""
    actions = None if actions_bf is None else self._chunks(actions_bf)

    def body(cache, xs):
      x0, a = xs
      return self.write_chunk(params, cache, x0, labels_b, a), None

    cache, _ = jax.lax.scan(body, cache, (self._chunks(context_bfhwc), actions))
    return cache

  def rollout(self, params, cache, x_start_bfhwc, times_bs, labels_b=None, actions_bf=None):
    """Generates len(x_start) frames after what the cache holds; returns (frames, cache)."""
    actions = None if actions_bf is None else self._chunks(actions_bf)

    def body(cache, xs):
      x_start, a = xs
      x0, cache = self.chunk_step(params, cache, x_start, times_bs, labels_b, a)
      return cache, x0

    cache, frames = jax.lax.scan(body, cache, (self._chunks(x_start_bfhwc), actions))
    return self._unchunk(frames), cache

  def _start(self, prefill, params, batch, num_steps, time_shift, context_bfhwc, labels_b,
             actions_bf):
    """An empty cache with the context prefilled, the context length, and the Euler grid."""
    cache = self.init_cache(batch)
    num_context = 0
    if context_bfhwc is not None:
      num_context = context_bfhwc.shape[1]
      context_actions = None if actions_bf is None else actions_bf[:, :num_context]
      cache = prefill(params, cache, context_bfhwc, labels_b, context_actions)
    times = jnp.broadcast_to(flow.step_times(num_steps, time_shift), (batch, num_steps + 1))
    return cache, num_context, times

  @functools.partial(jax.jit, static_argnums=(0, 3, 4, 5))
  def generate(self, params, rng, num_frames: int, num_steps: int, time_shift: float,
               context_bfhwc=None, labels_b=None, actions_bf=None):
    """Generates `num_frames` frames from noise after an optional clean context.

    `actions_bf`, when the model takes actions, covers context and generated frames."""
    batch = 1 if context_bfhwc is None else context_bfhwc.shape[0]
    if labels_b is not None:
      batch = labels_b.shape[0]
    cache, num_context, times = self._start(self.prefill, params, batch, num_steps, time_shift,
                                            context_bfhwc, labels_b, actions_bf)
    noise = jax.random.normal(rng, (batch, num_frames) + self.frame_shape)
    gen_actions = None if actions_bf is None else actions_bf[:, num_context:]
    frames, _ = self.rollout(params, cache, noise, times, labels_b, gen_actions)
    return frames

  def stream(self, params, rng, num_frames: int, num_steps: int, time_shift: float,
             context_bfhwc=None, labels_b=None, actions_bf=None,
             batch: int = 1) -> Iterator[np.ndarray]:
    """Yields chunks [B, chunk, H, W, C] as they are generated; one compiled chunk step."""
    if context_bfhwc is not None:
      batch = context_bfhwc.shape[0]
    cache, num_context, times = self._start(self._jit_prefill, params, batch, num_steps,
                                            time_shift, context_bfhwc, labels_b, actions_bf)
    for i in range(num_frames // self.chunk):
      rng, noise_rng = jax.random.split(rng)
      noise = jax.random.normal(noise_rng, (batch, self.chunk) + self.frame_shape)
      start = num_context + i * self.chunk
      actions = None if actions_bf is None else actions_bf[:, start:start + self.chunk]
      x0, cache = self._jit_chunk_step(params, cache, noise, times, labels_b, actions)
      yield np.asarray(x0)
