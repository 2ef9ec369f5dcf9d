"""ODE regression (spec 5.2): a block-causal few-step student regresses a frozen bidirectional
teacher's ODE trajectories onto their clean endpoints.

Every training clip carries the teacher's solver states at the student's K few-step levels plus
the clean endpoint (`ode_states` [B, F, K + 1, H, W, C], written by videoar/ode_pairs.py;
state K is `video`). Every chunk draws one state index k uniform on {0..K}, shared by its frames
and independent across chunks and videos, and the student reads that state at t = state_times[k]
(t = 0 for the clean state). One block-causal pass over the whole clip gives every frame's x0
prediction; chunks drawn at the clean state act as clean context for later ones. The loss is the
MSE between the x0 prediction and the clean clip over the frames with t > 0, unweighted.

A student with the previous-frame input reads what the few-step sampler will give it, with the
teacher's clean endpoint standing in for its own earlier output: a noisy chunk's frames read the
clean frame before the chunk; a clean chunk's frames, written to the cache at t = 0, each read the
frame just before it (sampling.Sampler).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from videoar.attention import masks
from videoar.diffusion import flow
from videoar.models import dit

# What videoar/ode_pairs.py writes beside the pairs: how they were made (num_steps K,
# solver_steps, warp_shift, guidance_scale and the K + 1 state times). The states carry no times
# of their own, so a run reads this to check that its forcing keys are the pairs'.
METADATA = "ode_pairs.json"


def state_times(num_steps: int, shift: float) -> np.ndarray:
  """The times of the K + 1 stored states, noisy to clean, float32 [K + 1]: the student's warped
  few-step list t_k = shift_time(1 - k / K, shift), k = 0..K-1 (spec 1.2: [1, 0.9375, 0.8333,
  0.625] for K = 4 and shift 5), then 0 for the clean endpoint: the values of flow.step_times,
  which the few-step sampler steps through, as constants (numpy, usable while tracing)."""
  return flow.shift_time(np.linspace(1.0, 0.0, num_steps + 1), shift).astype(np.float32)


def draw_state_indices(rng: jax.Array, batch: int, num_frames: int, chunk: int,
                       num_steps: int) -> jax.Array:
  """int32 [B, F]: per chunk one index uniform on {0..K} (the clean state included), repeated
  over the chunk's frames, independent across chunks and videos (spec 5.2 step 1)."""
  k = jax.random.randint(rng, (batch, num_frames // chunk), 0, num_steps + 1)
  return jnp.repeat(k, chunk, axis=1)


def student_inputs(states_bfkhwc: jax.Array, k_bf: jax.Array, times_k) -> tuple:
  """(x [B, F, H, W, C], t [B, F]): each frame's stored state at its index k, and that state's
  time times_k[k]."""
  index = k_bf.reshape(k_bf.shape + (1,) * (states_bfkhwc.ndim - 2))
  x = jnp.take_along_axis(states_bfkhwc, index, axis=2)[:, :, 0]
  return x, jnp.asarray(times_k)[k_bf]


def previous_inputs(clean_bfhwc, t_bf, chunk: int) -> jax.Array:
  """The previous-frame input [B, F, H, W, C] of each frame, from the clean clip: the clean frame
  before its chunk where t > 0, the clean frame just before it where t = 0 (zeros before the
  first frame), as the sampler feeds a chunk being denoised and one being cached."""
  noisy = (t_bf > 0).reshape(t_bf.shape + (1,) * 3)
  return jnp.where(noisy, dit.previous_frames(clean_bfhwc, chunk, within_history=False),
                   dit.previous_frames(clean_bfhwc, chunk, within_history=True))


def predict_data(model: dit.CausalDiT, params, x_bfhwc, t_bf, cond: dict, *, chunk: int,
                 previous_bfhwc=None) -> jax.Array:
  """The student's clean-clip prediction x0 = x_t - t v [B, F, H, W, C] from one parallel pass
  over the whole clip with per-frame times t_bf [B, F] and a block-causal mask over chunks of
  `chunk` frames (frames see their own chunk and earlier ones). `previous_bfhwc`: the
  previous-frame input, for a model that reads it (previous_inputs)."""
  n = x_bfhwc.shape[1]
  v, _ = model.apply(params, x_bfhwc, t_bf, frame_pos_f=jnp.arange(n, dtype=jnp.int32),
                     mask=masks.BlockCausal(n, chunk), previous_bfhwc=previous_bfhwc, **cond)
  return x_bfhwc - t_bf.reshape(t_bf.shape + (1,) * 3) * v


def loss_fn(model: dit.CausalDiT, params, batch, rng, *, chunk: int, num_steps: int,
            warp_shift: float, step=None):
  """ODE-regression loss of a batch {video [B, F, H, W, C] (the clean endpoints), ode_states
  [B, F, K + 1, H, W, C], the model's conditioning}; K = num_steps, levels warped by warp_shift,
  both as the pairs were generated with.

  Raises ValueError when ode_states does not hold K + 1 states, or when the model predicts data
  and a level is below flow.MIN_DATA_PREDICTION_TIME, where its velocity output is clamped and
  x_t - t v would no longer be its x0 prediction.
  """
  del step
  times = state_times(num_steps, warp_shift)
  if model.prediction != "velocity" and times[-2] < flow.MIN_DATA_PREDICTION_TIME:
    raise ValueError(f"the lowest level t={times[-2]:.4f} of num_steps={num_steps},"
                     f" warp_shift={warp_shift} is below {flow.MIN_DATA_PREDICTION_TIME}, where a"
                     f" prediction={model.prediction!r} model's velocity is clamped")
  video, states = batch["video"], batch["ode_states"]
  if states.shape[2] != num_steps + 1:
    raise ValueError(f"ode_states {states.shape} holds {states.shape[2]} states per frame;"
                     f" num_steps={num_steps} reads {num_steps + 1}")
  b, n = video.shape[:2]
  k_bf = draw_state_indices(rng, b, n, chunk, num_steps)
  x, t_bf = student_inputs(states, k_bf, times)
  previous = previous_inputs(video, t_bf, chunk) if model.previous_frame_input else None
  x0 = predict_data(model, params, x, t_bf, model.conditioning(batch), chunk=chunk,
                    previous_bfhwc=previous)
  noisy = (t_bf > 0).astype(jnp.float32)
  per_frame = jnp.mean(jnp.square(x0 - video), axis=(2, 3, 4))
  # All-clean batches (probability (K + 1)^-(B F / chunk)) have nothing to regress.
  loss = jnp.sum(noisy * per_frame) / jnp.maximum(jnp.sum(noisy), 1.0)
  return loss, {"loss": loss}
