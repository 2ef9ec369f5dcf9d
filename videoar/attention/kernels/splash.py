"""Block-sparse attention on TPU: splash attention with a mask spec as its mask.

Splash skips every (block_q, block_kv) tile its mask leaves empty, forward and backward. The
spec's token mask becomes a NumpyMask (static), and `kv_frame_valid` (traced) becomes segment
ids: valid keys share the queries' segment, padding keys have one of their own.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask

from videoar.attention import masks

# Splash tiles are multiples of the TPU's 128 lanes.
BLOCKS = (512, 256, 128)


def _block(tq: int, tk: int) -> int:
  fitting = [b for b in BLOCKS if tq % b == 0 and tk % b == 0]
  if not fitting:
    raise ValueError(f"attention impl='pallas' on TPU (splash) needs query and key lengths that"
                     f" are multiples of 128, not {tq} and {tk}; use impl='blocked'")
  return fitting[0]


@functools.lru_cache(maxsize=None)
def _kernel(mask: masks.MaskSpec, tokens_per_frame: int, num_heads: int, interpret: bool):
  token_mask = mask.to_dense(tokens_per_frame)
  block = _block(*token_mask.shape)
  sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                            block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                            block_q_dq=block, block_kv_dq=block)
  heads = splash_mask.MultiHeadMask([splash_mask.NumpyMask(token_mask)] * num_heads)
  return splash.make_splash_mha(heads, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                interpret=interpret)


def attention(q, k, v, mask: masks.MaskSpec, *, tokens_per_frame: int,
              kv_frame_valid: jax.Array | None, interpret: bool) -> jax.Array:
  """q [B, Tq, H, D], k/v [B, Tk, H, D] -> [B, Tq, H, D]."""
  b, tq, h, d = q.shape
  kernel = _kernel(mask, tokens_per_frame, h, interpret)
  fk = k.shape[1] // tokens_per_frame
  valid = jnp.ones((b, fk), bool)
  if kv_frame_valid is not None:
    valid = jnp.broadcast_to(jnp.atleast_2d(kv_frame_valid), (b, fk))
  kv_segments = jnp.repeat(jnp.where(valid, 0, 1), tokens_per_frame, axis=1).astype(jnp.int32)
  q_segments = jnp.zeros((b, tq), jnp.int32)
  heads_major = lambda x: jnp.swapaxes(x, 1, 2)
  # Splash does not scale the logits.
  scaled_q = heads_major(q) * jnp.asarray(1.0 / np.sqrt(d), q.dtype)

  def one(q, k, v, q_seg, kv_seg):
    return kernel(q, k, v, segment_ids=splash.SegmentIds(q_seg, kv_seg))

  out = jax.vmap(one)(scaled_q, heads_major(k), heads_major(v), q_segments, kv_segments)
  return heads_major(out)
