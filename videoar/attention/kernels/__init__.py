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

Mosaic kernels cannot be partitioned by XLA, so under a mesh the kernel runs inside `shard_map`:
batch and heads split as the logical axis rules in scope place "batch" and "heads"
(videoar/train/sharding.py: flax's `nn.logical_axis_rules`, bound while the train step traces),
every other axis of q, k and v gathered (a `sequence` axis: the keys of every frame).
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from videoar.attention import masks
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


def _mesh_axes(logical_name: str, mesh) -> tuple[str, ...]:
  """The axes of `mesh` that the logical axis rules in scope give `logical_name` (none without
  rules)."""
  entry = nn.logical_to_mesh_axes((logical_name,))[0]
  named = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
  return tuple(axis for axis in named if axis in mesh.axis_names)


def _split(axes: tuple[str, ...], size: int, what: str, mesh) -> tuple[str, ...] | None:
  shards = math.prod(mesh.shape[axis] for axis in axes)
  if size % shards:
    raise ValueError(f"attention impl='pallas': {what}={size} does not split over the mesh axes"
                     f" {axes} ({shards} shards) that the logical rules give it")
  return axes or None


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
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return local(q, k, v, kv_frame_valid)
  b, _, h, _ = q.shape
  batch = _split(_mesh_axes("batch", mesh), b, "batch", mesh)
  heads = _split(_mesh_axes("heads", mesh), h, "num_heads", mesh)
  qkv_spec = PartitionSpec(batch, None, heads, None)
  if kv_frame_valid is None:
    args, specs = (q, k, v), (qkv_spec,) * 3
  else:
    args = (q, k, v, kv_frame_valid)
    specs = (qkv_spec,) * 3 + (PartitionSpec(batch, None) if kv_frame_valid.ndim == 2
                               else PartitionSpec(),)
  # check_vma=False: pallas_call does not track which mesh axes its outputs vary over.
  return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=qkv_spec,
                       check_vma=False)(*args)
