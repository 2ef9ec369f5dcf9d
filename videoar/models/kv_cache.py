"""The KV cache: an explicit pytree passed into the model and returned, never hidden state.

`slots` frames per layer. The first `sink` frames written (generated or prefilled) are the
attention sink and stay for good; later frames roll through the other `slots - sink` slots, the
oldest evicted first (spec §6.1). A chunk therefore sees the sink plus the most recent frames:
the view that masks.BlockCausal / masks.TeacherForcing(window=(slots - sink) / chunk, sink=sink)
give it in training.

Keys are stored before the rotary embedding, which is applied when they are read (as
Infinite-Forcing does, spec §6.1), so that every read can choose the positions training used:
  - sink frames keep their absolute positions 0 .. sink - 1;
  - every other frame, and the queries, take their absolute index minus
    shift = max(next_index - span, 0), where `span` is where the last chunk of a training clip
    starts (N - chunk for N-frame clips).
While a chunk starts at or before `span`, positions are absolute, as in the parallel training
forward, and the cache equals recomputation under the training mask. Past it, every chunk gets
the positions of the last training chunk: it sees the sink at the same distance and its window at
the same offsets as that chunk does under the training mask, at every later step. With absolute
positions the sink would drift ever further away, to distances training never showed (spec
§6.1).

Without a sink only the offsets between held frames matter (RoPE is relative), and the default
span = slots keeps the oldest held frame at position 0 once the cache is full.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class KVCache:
  """The cache's arrays, and its layout as static fields (part of the pytree's structure)."""

  k: jax.Array            # [layers, B, slots, T, H, D], before the rotary embedding
  v: jax.Array            # [layers, B, slots, T, H, D]
  frame_index: jax.Array  # [slots] int32: absolute index of the frame in each slot, -1 if empty
  next_index: jax.Array   # [] int32: absolute index of the next frame to be written
  last_frame: jax.Array   # [B, H, W, C]: the newest clean frame (zeros before the first),
                          # for models that read the previous frame (previous_frame_input)
  sink: int = flax.struct.field(pytree_node=False)  # frames kept for good, in slots [0, sink)
  span: int = flax.struct.field(pytree_node=False)  # largest position a query chunk starts at

  @property
  def slots(self) -> int:
    return self.k.shape[2]


def init(*, num_layers: int, batch: int, slots: int, tokens_per_frame: int, num_heads: int,
         head_dim: int, frame_shape: tuple[int, int, int], sink: int = 0,
         span: int | None = None, dtype=jnp.float32) -> KVCache:
  """An empty cache of `slots` frames.

  sink: the first frames written, kept for good; a multiple of the chunk (checked by `write`),
    below `slots` so that later frames have room.
  span: the position a chunk starts at once it is past the training length: N - chunk for a
    model trained on N-frame clips (default `slots`, enough without a sink); at least `slots`,
    since training clips hold at least the slots plus a chunk.

  Raises ValueError for a sink outside [0, slots) or a span below slots.
  """
  if sink < 0 or (sink and sink >= slots):
    raise ValueError(f"cache sink={sink} must be >= 0 and leave room in slots={slots}")
  span = slots if span is None else span
  if span < slots:
    raise ValueError(f"cache span={span} must be >= slots={slots}")
  shape = (num_layers, batch, slots, tokens_per_frame, num_heads, head_dim)
  return KVCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
                 frame_index=jnp.full((slots,), -1, jnp.int32),
                 next_index=jnp.zeros((), jnp.int32),
                 last_frame=jnp.zeros((batch,) + tuple(frame_shape), jnp.float32),
                 sink=sink, span=span)


def frame_valid(cache: KVCache) -> jax.Array:
  """[slots] bool: which slots hold a written frame (frame_index >= 0); empty slots are never
  attended."""
  return cache.frame_index >= 0


def _shift(cache: KVCache) -> jax.Array:
  """How far below its absolute index a non-sink frame's position lies."""
  return jnp.maximum(cache.next_index - cache.span, 0)


def frame_positions(cache: KVCache) -> jax.Array:
  """Rotary positions [slots] of the cached frames (those of empty slots are never attended)."""
  return jnp.where(cache.frame_index < cache.sink, cache.frame_index,
                   cache.frame_index - _shift(cache))


def query_positions(cache: KVCache, num_frames: int) -> jax.Array:
  """Rotary positions of the next `num_frames` frames, continuing the cached ones."""
  return cache.next_index - _shift(cache) + jnp.arange(num_frames, dtype=jnp.int32)


def write(cache: KVCache, k_new: jax.Array, v_new: jax.Array, frames_bchwc: jax.Array) -> KVCache:
  """Appends one chunk (keys and values [layers, B, c, T, H, D] of the clean frames
  [B, c, H, W, C]); once the cache is full it replaces the oldest chunk after the sink.

  Raises ValueError unless `slots` and `sink` are multiples of the chunk, so that a chunk never
  wraps around the ring nor straddles the sink's end."""
  c = k_new.shape[2]
  last_frame = frames_bchwc[:, -1].astype(cache.last_frame.dtype)
  if cache.slots == 0:
    return cache.replace(next_index=cache.next_index + c, last_frame=last_frame)
  if cache.slots % c or cache.sink % c:
    raise ValueError(f"cache slots={cache.slots} and sink={cache.sink} must be multiples of the"
                     f" chunk ({c})")
  # The sink fills slots [0, sink) once; every later frame cycles through [sink, slots).
  start = jnp.where(cache.next_index < cache.sink, cache.next_index,
                    cache.sink + (cache.next_index - cache.sink) % (cache.slots - cache.sink))
  k = jax.lax.dynamic_update_slice_in_dim(cache.k, k_new.astype(cache.k.dtype), start, axis=2)
  v = jax.lax.dynamic_update_slice_in_dim(cache.v, v_new.astype(cache.v.dtype), start, axis=2)
  frame_index = jax.lax.dynamic_update_slice_in_dim(
      cache.frame_index, cache.next_index + jnp.arange(c, dtype=jnp.int32), start, axis=0)
  return cache.replace(k=k, v=v, frame_index=frame_index, next_index=cache.next_index + c,
                       last_frame=last_frame)
