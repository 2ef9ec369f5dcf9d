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
  pallas   Pallas kernels (kernels/): block-sparse from the frame mask, or routed over each query
           tile's picked frames; on CPU they run in interpret mode (tests only: slow).
  auto     dense under a Full mask without routing, otherwise blocked, on every platform: the
           Pallas kernels are opt-in until they are measured on a GPU and a TPU
           (docs/performance.md).
"""

from __future__ import annotations

import jax

from videoar.attention import blocked, masks
from videoar.attention import routing as routing_lib
from videoar.attention.reference import dense_attention

IMPLS = ("auto", "dense", "blocked", "pallas")


def _check_shapes(q, k, v, mask: masks.MaskSpec, tokens_per_frame: int) -> None:
  if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
    raise ValueError(f"attention: q {q.shape}, k {k.shape}, v {v.shape} do not agree")
  fq, fk = mask.frame_mask().shape
  if (q.shape[1], k.shape[1]) != (fq * tokens_per_frame, fk * tokens_per_frame):
    raise ValueError(
        f"attention: mask {mask} covers {fq}x{fk} frames of {tokens_per_frame} tokens, but q has"
        f" {q.shape[1]} and k {k.shape[1]} tokens")


def choose_impl(mask: masks.MaskSpec, routing: routing_lib.Routing | None) -> str:
  """What impl="auto" runs: blocked wherever the mask or routing leaves blocks out."""
  if routing is None and isinstance(mask, masks.Full):
    return "dense"
  return "blocked"


def attention(q, k, v, mask: masks.MaskSpec, *, tokens_per_frame: int,
              kv_frame_valid: jax.Array | None = None,
              routing: routing_lib.Routing | None = None, impl: str = "auto") -> jax.Array:
  if impl not in IMPLS:
    raise ValueError(f"attention impl={impl!r} is unknown; allowed: {', '.join(IMPLS)}")
  _check_shapes(q, k, v, mask, tokens_per_frame)
  if impl == "auto":
    impl = choose_impl(mask, routing)
  kwargs = dict(tokens_per_frame=tokens_per_frame, kv_frame_valid=kv_frame_valid)
  if impl == "pallas":
    # Imported here: the kernels pull in Pallas, which plain XLA paths never need.
    from videoar.attention import kernels  # pylint: disable=g-import-not-at-top
    return kernels.attention(q, k, v, mask, routing=routing, **kwargs)
  if routing is None:
    if impl == "dense":
      return dense_attention(q, k, v, mask, **kwargs)
    return blocked.blocked_attention(q, k, v, mask, **kwargs)
  if impl == "dense":
    return routing_lib.routed_attention_reference(q, k, v, mask, routing, **kwargs)
  if blocked.prefers_gather(mask, routing, q.shape[-1]):
    return blocked.routed_gather_attention(q, k, v, mask, routing, **kwargs)
  selection = routing_lib.select_frames(q, k, mask, routing, **kwargs)
  return blocked.blocked_attention(q, k, v, mask, selection=selection, **kwargs)
