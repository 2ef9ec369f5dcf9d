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


def two_n_layout_previous(model: dit.CausalDiT, history_bfhwc, chunk: int):
  """The previous-frame input of the 2N layout [history ; noisy], for models that read it."""
  if not model.previous_frame_input:
    return None
  return jnp.concatenate([dit.previous_frames(history_bfhwc, chunk, within_history=True),
                          dit.previous_frames(history_bfhwc, chunk, within_history=False)], 1)


def history_conditioned_loss(model: dit.CausalDiT, params, history_bfhwc, video_bfhwc,
                             cond: dict, rng, *, chunk: int, time_shift: float,
                             history_window: int = 0):
  """Flow-matching loss of every frame of `video`, each conditioned on `history` before it."""
  b, n = video_bfhwc.shape[:2]
  time_rng, noise_rng = jax.random.split(rng)
  t_bf = common.per_chunk_time(time_rng, b, n, chunk, time_shift)
  eps = jax.random.normal(noise_rng, video_bfhwc.shape)
  x_t = flow.interpolate(video_bfhwc, eps, t_bf)
  sequence = jnp.concatenate([history_bfhwc, x_t], axis=1)
  t_sequence = jnp.concatenate([jnp.zeros_like(t_bf), t_bf], axis=1)
  frame_pos = jnp.tile(jnp.arange(n, dtype=jnp.int32), 2)
  v, _ = model.apply(params, sequence, t_sequence, frame_pos_f=frame_pos,
                     mask=masks.TeacherForcing(n, chunk, history_window),
                     previous_bfhwc=two_n_layout_previous(model, history_bfhwc, chunk),
                     **common.repeat_frames(cond, 2))
  loss = common.mse(v[:, n:], flow.velocity_target(video_bfhwc, eps))
  return loss, {"loss": loss}


def loss_fn(model: dit.CausalDiT, params, batch, rng, *, chunk: int, time_shift: float,
            cond_drop_prob: float, history_window: int = 0, step=None):
  del step
  cond_rng, loss_rng = jax.random.split(rng)
  cond = common.conditioning(model, batch, cond_rng, cond_drop_prob)
  video = batch["video"]
  return history_conditioned_loss(model, params, video, video, cond, loss_rng,
                                  chunk=chunk, time_shift=time_shift,
                                  history_window=history_window)
