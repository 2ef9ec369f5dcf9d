"""What every paradigm shares: conditioning from a batch, CFG dropout, the frame-level loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from videoar.diffusion import flow
from videoar.models import dit


def conditioning(model: dit.CausalDiT, batch: dict, rng: jax.Array, drop_prob: float) -> dict:
  """The model's conditioning keyword arguments from a batch (labels_b [B], actions_bf [B, F],
  text_bld [B, L, D]), each replaced by its null with probability `drop_prob` (per video for
  labels and text, per frame for actions), so that the same model also learns the
  unconditional velocity that classifier-free guidance needs."""
  cond = model.conditioning(batch)
  null = model.null_conditioning(cond)
  for (key, value), key_rng in zip(sorted(cond.items()), jax.random.split(rng, 3)):
    drop_shape = value.shape[:2] if key in dit.PER_FRAME_CONDITIONING else value.shape[:1]
    drop = jax.random.bernoulli(key_rng, drop_prob, drop_shape)
    drop = drop.reshape(drop_shape + (1,) * (value.ndim - len(drop_shape)))
    cond[key] = jnp.where(drop, null[key], value)
  return cond


def repeat_frames(cond: dict, times: int) -> dict:
  """`cond` for a sequence that holds the video's frames `times` times over (the 2N layout)."""
  return {key: jnp.tile(value, (1, times)) if key in dit.PER_FRAME_CONDITIONING else value
          for key, value in cond.items()}


def per_chunk_time(rng: jax.Array, batch: int, num_frames: int, chunk: int, shift: float):
  """One training time per chunk, shared by its frames, since a chunk is denoised together."""
  t = flow.sample_time(rng, (batch, num_frames // chunk), shift)
  return jnp.repeat(t, chunk, axis=1)


def mse(prediction, target):
  """The mean of the squared difference of `prediction` and `target` over all entries: []."""
  return jnp.mean(jnp.square(prediction - target))


def flow_loss(velocity_bfhwc, video_bfhwc, eps_bfhwc, t_bf, weighting: str):
  """The flow-matching loss of a network's velocity for frames [B, F, H, W, C] noised with
  `eps` at times t_bf [B, F], weighted per frame by `flow.loss_weight(weighting, t)`."""
  error_bf = jnp.mean(jnp.square(velocity_bfhwc - flow.velocity_target(video_bfhwc, eps_bfhwc)),
                      axis=(2, 3, 4))
  return jnp.mean(flow.loss_weight(weighting, t_bf) * error_bf)
