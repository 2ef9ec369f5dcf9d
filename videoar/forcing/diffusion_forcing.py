"""Diffusion Forcing: one sequence of noisy frames, an independent t per frame, block-causal."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from videoar.attention import masks
from videoar.diffusion import flow
from videoar.forcing import common
from videoar.models import dit


def loss_fn(model: dit.CausalDiT, params, batch, rng, *, chunk: int, time_shift: float,
            cond_drop_prob: float, loss_weighting: str = "velocity", step=None):
  """Diffusion Forcing's flow-matching loss (Chen et al. 2024) of a batch {video
  [B, N, H, W, C], the model's conditioning}: an independent time t per frame, the N noisy
  frames predicted in one pass under the block-causal mask of `chunk`-frame chunks
  (masks.BlockCausal). The conditioning is dropped to its null with probability cond_drop_prob;
  `step` is unused. Returns (loss, {"loss": loss}). Raises ValueError for an unknown
  loss_weighting or a chunk below 1."""
  del step
  cond_rng, time_rng, noise_rng = jax.random.split(rng, 3)
  cond = common.conditioning(model, batch, cond_rng, cond_drop_prob)
  video = batch["video"]
  b, n = video.shape[:2]
  t_bf = flow.sample_time(time_rng, (b, n), time_shift)
  eps = jax.random.normal(noise_rng, video.shape)
  v, _ = model.apply(params, flow.interpolate(video, eps, t_bf), t_bf,
                     frame_pos_f=jnp.arange(n, dtype=jnp.int32), mask=masks.BlockCausal(n, chunk),
                     **cond)
  loss = common.flow_loss(v, video, eps, t_bf, loss_weighting)
  return loss, {"loss": loss}
