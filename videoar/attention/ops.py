"""The one attention entry point: every model call goes through `attention`.

q: [B, Tq, H, D], k and v: [B, Tk, H, D], tokens grouped in frames of `tokens_per_frame`.
`mask` is a frame-level spec (masks.py) whose frame mask is [Tq/T, Tk/T]; `kv_frame_valid`
([B, Tk/T] or [Tk/T] bool, traced) further hides key frames that exist only as padding, such as
the empty slots of a KV cache. `routing` (routing.py) narrows each query token's history to
its top-k key frames.

Implementations (`impl`), all equal to the dense reference up to float rounding:
  dense    every query-key pair, masked (reference.py: the reference; nothing to skip under a
           Full mask).
  blocked  XLA over only the frame blocks the mask allows (blocked.py); routed attention either
           masks those blocks by the selection or gathers each token's picked frames, whichever
           costs less at the shape (blocked.prefers_gather).
  pallas   splash attention (kernels/): block-sparse from the frame mask, lowered through Mosaic
           on TPU, in Pallas interpret mode on CPU (tests only: slow); no GPU kernel and no
           routed kernel (both raise).
  cudnn    cuDNN's flash attention on a GPU (fused.py), bfloat16 or float16, no routing: Full
           masks (a sampler's chunk over its KV cache), and the training masks where blocked.py's
           query groups are single frames (Wan's 1,560 tokens), one call per query frame.
  auto     on TPU, pallas without routing where frames fill the kernel's tiles (splash: flash
           attention that skips the empty tiles, keeping no [Tq, Tk] logits); on GPU, cudnn
           where it serves the call; elsewhere, and for routing everywhere, dense under a Full
           mask without routing and blocked otherwise (docs/performance.md).

A mask whose chunks see only themselves (masks.diagonal_chunk; a FineDecoder's frames) runs,
under every impl, as a batch of Full attentions, one per chunk.

The platform is the one the computation is compiled for (`target_platform`): the devices of the
mesh in scope while tracing, so that a train step compiled ahead of time for a TPU topology on a
CPU host (launch/aot_compile.py) gets the TPU kernel, not the host's.
"""

from __future__ import annotations

import jax

from videoar.attention import blocked, fused, masks
from videoar.attention import routing as routing_lib
from videoar.attention.reference import dense_attention

IMPLS = ("auto", "dense", "blocked", "pallas", "cudnn")


def _check_shapes(q, k, v, mask: masks.MaskSpec, tokens_per_frame: int) -> None:
  if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
    raise ValueError(f"attention: q {q.shape}, k {k.shape}, v {v.shape} do not agree")
  fq, fk = mask.frame_mask().shape
  if (q.shape[1], k.shape[1]) != (fq * tokens_per_frame, fk * tokens_per_frame):
    raise ValueError(
        f"attention: mask {mask} covers {fq}x{fk} frames of {tokens_per_frame} tokens, but q has"
        f" {q.shape[1]} and k {k.shape[1]} tokens")


def target_platform() -> str:
  """"tpu", "gpu" or "cpu": the platform of the mesh in scope while tracing
  (`jax.sharding.use_abstract_mesh` or `jax.set_mesh`; the train step binds its layout's mesh,
  train/sharding.py), else the default backend's.

  The mesh's devices are those the step is compiled for, on a host of another platform too; the
  host's `jax.default_backend()` is not."""
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty and mesh.abstract_device is not None:
    return mesh.abstract_device.platform
  return jax.default_backend()


def choose_impl(mask: masks.MaskSpec, routing: routing_lib.Routing | None, platform: str,
                tokens_per_frame: int, *, dtype, head_dim: int,
                has_kv_frame_valid: bool = False) -> str:
  """What impl="auto" runs on `platform` for operands of `dtype` and heads of `head_dim`: the
  splash kernel on TPU where padding the frames to its tiles adds at most 1/8 of the tokens
  (1,560 -> 1,664 does; 16 -> 128 would compute 64x the logits); cuDNN on GPU where it serves
  the call (fused.unsupported); otherwise, and for routing, blocked wherever the mask or routing
  leaves blocks out, dense where nothing can be skipped."""
  if platform == "gpu" and fused.unsupported(
      mask, has_routing=routing is not None, has_kv_frame_valid=has_kv_frame_valid,
      tokens_per_frame=tokens_per_frame, dtype=dtype, head_dim=head_dim) is None:
    return "cudnn"
  if routing is None and platform == "tpu":
    # Imported here: the kernels pull in Pallas, which plain XLA paths never need.
    from videoar.attention import kernels  # pylint: disable=g-import-not-at-top
    if kernels.padded_tokens(tokens_per_frame) * 8 <= tokens_per_frame * 9:
      return "pallas"
  if routing is None and isinstance(mask, masks.Full):
    return "dense"
  return "blocked"


def attention(q, k, v, mask: masks.MaskSpec, *, tokens_per_frame: int,
              kv_frame_valid: jax.Array | None = None,
              routing: routing_lib.Routing | None = None, impl: str = "auto") -> jax.Array:
  """q [B, Tq, H, D], k/v [B, Tk, H, D] -> [B, Tq, H, D] (module docstring), any
  tokens_per_frame on every path.

  Raises ValueError for an unknown impl, shapes that disagree with each other or the mask,
  routing over a bidirectional Full mask, impl="pallas" with routing or on a GPU, impl="cudnn"
  off a GPU or on a call it does not serve, and (blocked, pallas) a mask with a query frame that
  sees no key frame."""
  if impl not in IMPLS:
    raise ValueError(f"attention impl={impl!r} is unknown; allowed: {', '.join(IMPLS)}")
  _check_shapes(q, k, v, mask, tokens_per_frame)
  chunk = masks.diagonal_chunk(mask)
  if chunk and not isinstance(mask, masks.Full) and routing is None and kv_frame_valid is None:
    # Chunks that see only themselves are a batch of Full attentions: nothing to mask or skip.
    b, tokens, heads, head_dim = q.shape
    per_chunk = chunk * tokens_per_frame
    fold = lambda x: x.reshape(b * (tokens // per_chunk), per_chunk, heads, head_dim)
    out = attention(fold(q), fold(k), fold(v), masks.Full(chunk),
                    tokens_per_frame=tokens_per_frame, impl=impl)
    return out.reshape(q.shape)
  platform = target_platform()
  if impl == "auto":
    impl = choose_impl(mask, routing, platform, tokens_per_frame, dtype=q.dtype,
                       head_dim=q.shape[-1], has_kv_frame_valid=kv_frame_valid is not None)
  kwargs = dict(tokens_per_frame=tokens_per_frame, kv_frame_valid=kv_frame_valid)
  if impl == "cudnn":
    if platform != "gpu":
      raise ValueError(f"attention impl='cudnn' needs a GPU target; this one is {platform!r}")
    why = fused.unsupported(
        mask, has_routing=routing is not None, has_kv_frame_valid=kv_frame_valid is not None,
        tokens_per_frame=tokens_per_frame, dtype=q.dtype, head_dim=q.shape[-1])
    if why is not None:
      raise ValueError(f"attention impl='cudnn' does not serve this call: {why}; impl='auto'"
                       " picks another path")
    return fused.attention(q, k, v, mask, **kwargs)
  if impl == "pallas":
    if routing is not None:
      raise ValueError("attention impl='pallas' has no routed kernel; routing runs"
                       " impl='blocked' (impl='auto' picks it)")
    # Imported here: the kernels pull in Pallas, which plain XLA paths never need.
    from videoar.attention import kernels  # pylint: disable=g-import-not-at-top
    return kernels.attention(q, k, v, mask, platform=platform, **kwargs)
  if routing is None:
    if impl == "dense":
      return dense_attention(q, k, v, mask, **kwargs)
    return blocked.blocked_attention(q, k, v, mask, platform=platform, **kwargs)
  if impl == "dense":
    return routing_lib.routed_attention_reference(q, k, v, mask, routing, **kwargs)
  if blocked.prefers_gather(mask, routing):
    return blocked.routed_gather_attention(q, k, v, mask, routing, **kwargs)
  selection = routing_lib.select_frames(q, k, mask, routing, **kwargs)
  return blocked.blocked_attention(q, k, v, mask, selection=selection, **kwargs)
