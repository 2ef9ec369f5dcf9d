"""Block-sparse attention on TPU: JAX's splash attention with a mask spec as its mask.

Splash skips every (block, block) tile its mask leaves empty, forward and backward. Its mask is
`FrameMask`, a lazy token-level view of the spec's frame mask: splash reads it one tile at a time
when it builds its block tables, so no token-level array exists on the host (the whole token
mask of the Wan-1.3B 2N layout, 42 frames of 1,664 padded tokens, would be 4.9 GB). Frames are
whole tiles (the dispatcher pads them to a multiple of TILE), so every tile is all-allowed or
empty and splash stores no partial mask blocks. `kv_frame_valid` (traced) and the padding
tokens become segment ids: keys that may be seen share the queries' segment, the others have one
of their own.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask

from videoar.attention import masks

# Splash tiles are multiples of the TPU's 128 lanes; frames are padded to a multiple of TILE.
TILE = 128
BLOCKS = (512, 256, 128)


class FrameMask(splash_mask.Mask):
  """The token mask of a frame mask [Fq, Fk] (frames of `tokens_per_frame` tokens), computed
  per slice: `mask[rows, cols]` builds only that slice."""

  def __init__(self, frame_mask: np.ndarray, tokens_per_frame: int):
    self.frame_mask = frame_mask
    self.tokens_per_frame = tokens_per_frame

  @property
  def shape(self) -> tuple[int, int]:
    fq, fk = self.frame_mask.shape
    return fq * self.tokens_per_frame, fk * self.tokens_per_frame

  def __getitem__(self, idx) -> np.ndarray:
    (q0, q1, _), (k0, k1, _) = (s.indices(n) for s, n in zip(idx, self.shape))
    t = self.tokens_per_frame
    if q1 > q0 and k1 > k0 and q0 // t == (q1 - 1) // t and k0 // t == (k1 - 1) // t:
      # Within one query frame and one key frame, as every tile is when frames are whole
      # tiles: a read-only view of one value (splash asks for each tile, 10^5-10^6 of them).
      return np.broadcast_to(self.frame_mask[q0 // t, k0 // t], (q1 - q0, k1 - k0))
    return self.frame_mask[np.arange(q0, q1)[:, None] // t, np.arange(k0, k1)[None, :] // t]

  def __eq__(self, other) -> bool:
    return (isinstance(other, FrameMask) and self.tokens_per_frame == other.tokens_per_frame
            and np.array_equal(self.frame_mask, other.frame_mask))

  def __hash__(self) -> int:
    return hash((self.frame_mask.shape, self.frame_mask.tobytes(), self.tokens_per_frame))


def block_size(tokens_per_frame: int) -> int:
  """The largest splash block that tiles a (padded) frame."""
  return next(b for b in BLOCKS if tokens_per_frame % b == 0)


@functools.lru_cache(maxsize=None)
def _kernel(mask: masks.MaskSpec, tokens_per_frame: int, num_heads: int, interpret: bool):
  block = block_size(tokens_per_frame)
  sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                            block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                            block_q_dq=block, block_kv_dq=block)
  heads = splash_mask.MultiHeadMask([FrameMask(mask.frame_mask(), tokens_per_frame)] * num_heads)
  # The kernel holds its block tables as arrays: made concrete here, so that a kernel cached in
  # one trace is no leaked tracer in the next.
  with jax.ensure_compile_time_eval():
    return splash.make_splash_mha(heads, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                  interpret=interpret)


def attention(q, k, v, mask: masks.MaskSpec, *, tokens_per_frame: int, real_tokens: int,
              kv_frame_valid: jax.Array | None, interpret: bool) -> jax.Array:
  """q [B, Tq, H, D], k/v [B, Tk, H, D] -> [B, Tq, H, D], frames of `tokens_per_frame` tokens
  (a multiple of TILE) of which the first `real_tokens` are real: the other keys are hidden.

  Follows JAX's splash attention (jax.experimental.pallas.ops.tpu.splash_attention)."""
  b, tq, h, d = q.shape
  kernel = _kernel(mask, tokens_per_frame, h, interpret)
  fk = k.shape[1] // tokens_per_frame
  valid = jnp.ones((b, fk), bool)
  if kv_frame_valid is not None:
    valid = jnp.broadcast_to(jnp.atleast_2d(kv_frame_valid), (b, fk))
  real = np.arange(tokens_per_frame) < real_tokens
  seen = (valid[:, :, None] & real).reshape(b, fk * tokens_per_frame)
  kv_segments = jnp.where(seen, 0, 1).astype(jnp.int32)
  q_segments = jnp.zeros((b, tq), jnp.int32)
  heads_major = lambda x: jnp.swapaxes(x, 1, 2)
  # Splash does not scale the logits.
  scaled_q = heads_major(q) * jnp.asarray(1.0 / np.sqrt(d), q.dtype)

  def one(q, k, v, q_seg, kv_seg):
    return kernel(q, k, v, segment_ids=splash.SegmentIds(q_seg, kv_seg))

  out = jax.vmap(one)(scaled_q, heads_major(k), heads_major(v), q_segments, kv_segments)
  return heads_major(out)
