"""Teacher Forcing: all frames trained in one pass over the 2N layout [history ; noisy frames].

Noisy frame i sees the history before its chunk and the noisy frames of its own chunk
(masks.TeacherForcing). The history is the clean video here; Resampling Forcing passes its
degraded history to the same `history_conditioned_loss`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from videoar.attention import masks
from videoar.diffusion import flow
from videoar.forcing import common
from videoar.models import dit


def apply_two_n(model: dit.CausalDiT, params, history_bfhwc, x_t_bfhwc, t_bf, cond: dict, *,
                chunk: int, history_window: int = 0, sink_frames: int = 0, mutable=False,
                history_t_bf=None):
  """The model on the 2N layout [history ; noisy frames]: the one place the sequence is built.

  history_bfhwc, x_t_bfhwc: [B, N, H, W, C]; t_bf: [B, N], the noisy frames' times; history_t_bf:
  [B, N], the history's (default t = 0: clean). Both halves take positions 0..N-1; noisy frame i
  sees the history before its chunk and the noisy frames of its own chunk (masks.TeacherForcing,
  windowed by `history_window` after `sink_frames`).
  Returns the model's velocity of the N noisy frames [B, N, H, W, C] and its new KV (over all 2N
  frames) and, with `mutable`, its collections.
  """
  n = x_t_bfhwc.shape[1]
  previous = None
  if model.previous_frame_input:
    previous = jnp.concatenate(
        [dit.previous_frames(history_bfhwc, chunk, within_history=True),
         dit.previous_frames(history_bfhwc, chunk, within_history=False)], axis=1)
  if history_t_bf is None:
    history_t_bf = jnp.zeros_like(t_bf)
  return model.apply(params, jnp.concatenate([history_bfhwc, x_t_bfhwc], axis=1),
                     jnp.concatenate([history_t_bf, t_bf], axis=1),
                     frame_pos_f=jnp.tile(jnp.arange(n, dtype=jnp.int32), 2),
                     mask=masks.TeacherForcing(n, chunk, history_window, sink_frames),
                     previous_bfhwc=previous, mutable=mutable, outputs_from=n,
                     **common.repeat_frames(cond, 2))


def drop_history(history_bfhwc, rng, drop_prob: float):
  """`history` with each video's frames replaced by the null history (zeros) with probability
  `drop_prob`, so that the model also learns to generate without history: the null pass of
  history guidance (sampling.Sampler's guide_history; Song et al. 2025, History-Guided Video
  Diffusion). Zeros are also what a model reading the previous frame sees before the first."""
  drop_b = jax.random.bernoulli(rng, drop_prob, history_bfhwc.shape[:1])
  return jnp.where(drop_b[:, None, None, None, None], 0.0, history_bfhwc)


def history_conditioned_loss(model: dit.CausalDiT, params, history_bfhwc, video_bfhwc,
                             cond: dict, rng, *, chunk: int, time_shift: float,
                             loss_weighting: str = "velocity", history_window: int = 0,
                             sink_frames: int = 0, history_drop_prob: float = 0.0,
                             history_t_b=None):
  """Flow-matching loss of every frame of `video`, each conditioned on `history` before it
  (dropped to the null history per video with probability `history_drop_prob`). history_t_b
  [B]: the noise level each video's history frames are labelled with (default 0: clean); a
  dropped history keeps its label, its zeros tell it apart."""
  b, n = video_bfhwc.shape[:2]
  if history_drop_prob:
    # Its own stream: with no dropout the loss draws what it always drew.
    history_bfhwc = drop_history(history_bfhwc, jax.random.fold_in(rng, 1), history_drop_prob)
  time_rng, noise_rng = jax.random.split(rng)
  t_bf = common.per_chunk_time(time_rng, b, n, chunk, time_shift)
  eps = jax.random.normal(noise_rng, video_bfhwc.shape)
  x_t = flow.interpolate(video_bfhwc, eps, t_bf)
  history_t_bf = None if history_t_b is None else jnp.broadcast_to(history_t_b[:, None], (b, n))
  v, _ = apply_two_n(model, params, history_bfhwc, x_t, t_bf, cond, chunk=chunk,
                     history_window=history_window, sink_frames=sink_frames,
                     history_t_bf=history_t_bf)
  loss = common.flow_loss(v, video_bfhwc, eps, t_bf, loss_weighting)
  return loss, {"loss": loss}


def loss_fn(model: dit.CausalDiT, params, batch, rng, *, chunk: int, time_shift: float,
            cond_drop_prob: float, loss_weighting: str = "velocity", history_window: int = 0,
            sink_frames: int = 0, history_drop_prob: float = 0.0, step=None):
  """Teacher Forcing's flow-matching loss of a batch {video [B, N, H, W, C], the model's
  conditioning}: every frame noised at its chunk's time and predicted in one pass over
  Resampling Forcing's 2N layout [history ; noisy frames] (masks.TeacherForcing), the history
  being the clean video itself (history_conditioned_loss), dropped to the null history per
  video with probability history_drop_prob. The conditioning is dropped to its null with
  probability cond_drop_prob (common.conditioning); `step` is unused.
  Returns (loss, {"loss": loss}). Raises ValueError for an unknown loss_weighting, or a
  history_window or sink_frames that masks.TeacherForcing refuses.
  """
  del step
  cond_rng, loss_rng = jax.random.split(rng)
  cond = common.conditioning(model, batch, cond_rng, cond_drop_prob)
  video = batch["video"]
  return history_conditioned_loss(model, params, video, video, cond, loss_rng,
                                  chunk=chunk, time_shift=time_shift,
                                  loss_weighting=loss_weighting, history_window=history_window,
                                  sink_frames=sink_frames, history_drop_prob=history_drop_prob)


def routing_frequencies(model: dit.CausalDiT, params, video_bfhwc, cond: dict, *, chunk: int,
                        history_window: int = 0, sink_frames: int = 0) -> jax.Array:
  """[depth, N, N]: for noisy frame i (rows) the fraction of its query tokens x heads that
  routed to history frame j (columns), at t = 0.5, each layer separately, in the Teacher Forcing
  layout over the clean video [B, N, H, W, C], conditioned on `cond` (model.conditioning of the
  video's batch: a conditioned model needs it) and masked as the run trains (chunk, window,
  sink); NaN where that mask hides frame j from frame i (frames of its own chunk or later, and
  outside its window), so that averages over query frames count only those that may pick j.
  Raises ValueError for a model without routing."""
  if not model.routing_top_k:
    raise ValueError("routing_frequencies needs a model with routing_top_k > 0")
  b, n = video_bfhwc.shape[:2]
  eps = jax.random.normal(jax.random.key(0), video_bfhwc.shape)
  _, state = apply_two_n(model, params, video_bfhwc, 0.5 * (video_bfhwc + eps),
                         jnp.full((b, n), 0.5), cond, chunk=chunk, history_window=history_window,
                         sink_frames=sink_frames, mutable=["intermediates"])
  sown = state["intermediates"]
  if model.scan_layers:  # one entry stacked over the blocks
    per_layer = sown[dit.SCANNED_BLOCKS]["attn"]["routing_frequency"][0]
  else:
    per_layer = [v["attn"]["routing_frequency"][0] for k, v in
                 sorted(sown.items(), key=lambda kv: int(kv[0].split("_")[1]))]
  visible = masks.TeacherForcing(n, chunk, history_window, sink_frames).frame_mask()[n:, :n]
  return jnp.stack([jnp.where(visible, f[n:, :n], jnp.nan) for f in per_layer])
