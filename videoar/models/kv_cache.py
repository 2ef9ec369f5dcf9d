"""The KV cache: an explicit pytree passed into the model and returned, never hidden state.

A ring buffer of `slots` frames per layer. Keys are stored before the rotary embedding, which is
applied when they are read, at positions relative to the oldest frame held: once the buffer is
full the oldest frames are evicted and the window keeps the positions it was trained on.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class KVCache(NamedTuple):
  k: jax.Array            # [layers, B, slots, T, H, D]
  v: jax.Array            # [layers, B, slots, T, H, D]
  frame_index: jax.Array  # [slots] int32: absolute index of the frame in each slot, -1 if empty
  next_index: jax.Array   # [] int32: absolute index of the next frame to be written
  last_frame: jax.Array   # [B, H, W, C]: the newest clean frame (zeros before the first),
                          # for models that read the previous frame (previous_frame_input)

  @property
  def slots(self) -> int:
    return self.k.shape[2]


def init(*, num_layers: int, batch: int, slots: int, tokens_per_frame: int, num_heads: int,
         head_dim: int, frame_shape: tuple[int, int, int], dtype=jnp.float32) -> KVCache:
  shape = (num_layers, batch, slots, tokens_per_frame, num_heads, head_dim)
  return KVCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
                 frame_index=jnp.full((slots,), -1, jnp.int32),
                 next_index=jnp.zeros((), jnp.int32),
                 last_frame=jnp.zeros((batch,) + tuple(frame_shape), jnp.float32))


def window_start(cache: KVCache) -> jax.Array:
  """Absolute index of the oldest frame the cache holds (position 0 of the window)."""
  return jnp.maximum(cache.next_index - cache.slots, 0)


def frame_valid(cache: KVCache) -> jax.Array:
  return cache.frame_index >= 0


def frame_positions(cache: KVCache) -> jax.Array:
  """Rotary positions of the cached frames, relative to the window."""
  return jnp.maximum(cache.frame_index - window_start(cache), 0)


def query_positions(cache: KVCache, num_frames: int) -> jax.Array:
  """Rotary positions of the next `num_frames` frames, continuing the window."""
  return cache.next_index - window_start(cache) + jnp.arange(num_frames, dtype=jnp.int32)


def write(cache: KVCache, k_new: jax.Array, v_new: jax.Array, frames_bchwc: jax.Array) -> KVCache:
  """Appends one chunk (keys and values [layers, B, c, T, H, D] of the clean frames
  [B, c, H, W, C]), evicting the oldest chunk when full.

  `slots` must be a multiple of the chunk so that a chunk never wraps around the ring."""
  c = k_new.shape[2]
  last_frame = frames_bchwc[:, -1].astype(cache.last_frame.dtype)
  if cache.slots == 0:
    return cache._replace(next_index=cache.next_index + c, last_frame=last_frame)
  if cache.slots % c:
    raise ValueError(f"cache slots={cache.slots} must be a multiple of the chunk ({c})")
  start = cache.next_index % cache.slots
  k = jax.lax.dynamic_update_slice_in_dim(cache.k, k_new.astype(cache.k.dtype), start, axis=2)
  v = jax.lax.dynamic_update_slice_in_dim(cache.v, v_new.astype(cache.v.dtype), start, axis=2)
  frame_index = jax.lax.dynamic_update_slice_in_dim(
      cache.frame_index, cache.next_index + jnp.arange(c, dtype=jnp.int32), start, axis=0)
  return KVCache(k=k, v=v, frame_index=frame_index, next_index=cache.next_index + c,
                 last_frame=last_frame)
