"""What every paradigm shares: conditioning from a batch, CFG dropout, the frame-level loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from videoar.diffusion import flow
from videoar.models import dit


def conditioning(model: dit.CausalDiT, batch: dict, rng: jax.Array, drop_prob: float):
  """Labels [B] and actions [B, F] the model takes, with each replaced by its null id with
  probability `drop_prob` (per video for labels, per frame for actions), so that the same
  model also learns the unconditional velocity that classifier-free guidance needs."""
  label_rng, action_rng = jax.random.split(rng)
  labels = actions = None
  if model.num_classes:
    labels = batch["label"]
    drop = jax.random.bernoulli(label_rng, drop_prob, labels.shape)
    labels = jnp.where(drop, model.num_classes, labels)
  if model.num_actions:
    actions = batch["actions"]
    drop = jax.random.bernoulli(action_rng, drop_prob, actions.shape)
    actions = jnp.where(drop, model.num_actions, actions)
  return labels, actions


def per_chunk_time(rng: jax.Array, batch: int, num_frames: int, chunk: int, shift: float):
  """One training time per chunk, shared by its frames, since a chunk is denoised together."""
  t = flow.sample_time(rng, (batch, num_frames // chunk), shift)
  return jnp.repeat(t, chunk, axis=1)


def mse(prediction, target):
  return jnp.mean(jnp.square(prediction - target))
