"""The Pallas kernel behind `ops.attention(..., impl="pallas")`: splash attention (splash.py).

  TPU  splash lowered through Mosaic: block-sparse from the frame mask, forward and backward.
  CPU  the same kernel in Pallas interpret mode, tiles and padding included: right, slow, for
       tests.
  GPU  no kernel: the portable frame-list kernel that lowered through Triton was never run on a
       GPU and nothing chose it, so it is gone; `blocked` serves GPUs (docs/performance.md).
Routed attention has no kernel on any platform (a Mosaic kernel needs its per-tile frame lists as
scalar prefetch, not written); `blocked` serves it.

Frames whose token count is not a multiple of the tile (Wan: 1,560 tokens) are padded here to
the next multiple (1,664), the padding keys hidden, the padding queries' outputs dropped.

Mosaic kernels cannot be partitioned by XLA, so under a mesh the kernel runs inside `shard_map`
over the batch and the heads (sharded.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from videoar.attention import masks, sharded
from videoar.attention.kernels import splash

PLATFORMS = ("tpu", "cpu")


def padded_tokens(tokens_per_frame: int) -> int:
  """A frame's tokens padded up to a whole number of kernel tiles."""
  return -(-tokens_per_frame // splash.TILE) * splash.TILE


def _pad_frames(x: jax.Array, tokens_per_frame: int, padded: int) -> jax.Array:
  """[B, F*T, H, D] -> [B, F*padded, H, D], zeros after each frame's T tokens."""
  b, n, h, d = x.shape
  frames = x.reshape(b, n // tokens_per_frame, tokens_per_frame, h, d)
  frames = jnp.pad(frames, ((0, 0), (0, 0), (0, padded - tokens_per_frame), (0, 0), (0, 0)))
  return frames.reshape(b, -1, h, d)


def _unpad_frames(x: jax.Array, tokens_per_frame: int, padded: int) -> jax.Array:
  b, n, h, d = x.shape
  return x.reshape(b, n // padded, padded, h, d)[:, :, :tokens_per_frame].reshape(b, -1, h, d)


def _local_attention(q, k, v, kv_frame_valid=None, *, mask: masks.MaskSpec, tokens_per_frame: int,
                     interpret: bool) -> jax.Array:
  padded = padded_tokens(tokens_per_frame)
  pad = lambda x: _pad_frames(x, tokens_per_frame, padded)
  out = splash.attention(pad(q), pad(k), pad(v), mask, tokens_per_frame=padded,
                         real_tokens=tokens_per_frame, kv_frame_valid=kv_frame_valid,
                         interpret=interpret)
  return _unpad_frames(out, tokens_per_frame, padded)


def attention(q, k, v, mask: masks.MaskSpec, *, tokens_per_frame: int,
              kv_frame_valid: jax.Array | None, platform: str) -> jax.Array:
  """q [B, Tq, H, D], k/v [B, Tk, H, D] -> [B, Tq, H, D], as `ops.attention` without routing,
  for the target `platform` (ops.target_platform).

  Raises ValueError on a platform without a kernel (GPU), for a mask with a query frame that sees
  no key frame, or for a batch or head count that the mesh axes the logical rules give it do not
  divide."""
  if platform not in PLATFORMS:
    raise ValueError(
        f"attention impl='pallas' has no kernel for platform {platform!r} (kernels for"
        f" {', '.join(PLATFORMS)}); use impl='blocked' or impl='auto'")
  if not mask.frame_mask().any(axis=1).all():
    raise ValueError(f"attention impl='pallas': {mask} has query frames that see no key frame")
  local = functools.partial(_local_attention, mask=mask, tokens_per_frame=tokens_per_frame,
                            interpret=platform != "tpu")
  return sharded.over_batch_and_heads(local, q, k, v, kv_frame_valid, impl="pallas")
