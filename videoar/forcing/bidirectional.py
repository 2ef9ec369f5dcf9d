"""A bidirectional video model (the Self Forcing teacher): full attention, one t per video."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from videoar.attention import masks
from videoar.diffusion import flow
from videoar.forcing import common
from videoar.models import dit


def loss_fn(model: dit.CausalDiT, params, batch, rng, *, chunk: int, time_shift: float,
            cond_drop_prob: float, loss_weighting: str = "velocity", step=None):
  """The bidirectional model's flow-matching loss of a batch {video [B, N, H, W, C], the
  model's conditioning}: one time t per video shared by its N frames, all noised and predicted
  in one pass under full attention (masks.Full), the teacher of Self Forcing (Huang et al.
  2025). The conditioning is dropped to its null with probability cond_drop_prob; `chunk` and
  `step` are unused. Returns (loss, {"loss": loss}). Raises ValueError for an unknown
  loss_weighting."""
  del chunk, step
  cond_rng, time_rng, noise_rng = jax.random.split(rng, 3)
  cond = common.conditioning(model, batch, cond_rng, cond_drop_prob)
  video = batch["video"]
  b, n = video.shape[:2]
  t_bf = jnp.broadcast_to(flow.sample_time(time_rng, (b, 1), time_shift), (b, n))
  eps = jax.random.normal(noise_rng, video.shape)
  v, _ = model.apply(params, flow.interpolate(video, eps, t_bf), t_bf,
                     frame_pos_f=jnp.arange(n, dtype=jnp.int32), mask=masks.Full(n),
                     **cond)
  loss = common.flow_loss(v, video, eps, t_bf, loss_weighting)
  return loss, {"loss": loss}
