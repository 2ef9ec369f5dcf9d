"""Flow matching: t in [0, 1], t = 1 is pure noise, the model predicts the velocity eps - x."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _broadcast_time(t_bf: jax.Array, x: jax.Array) -> jax.Array:
  """Per-frame times [B, F] against frames [B, F, ...]."""
  return t_bf.reshape(t_bf.shape + (1,) * (x.ndim - t_bf.ndim))


def interpolate(x: jax.Array, eps: jax.Array, t_bf: jax.Array) -> jax.Array:
  """x_t = (1 - t) x + t eps: frames x [B, F, ...] moved to time t_bf [B, F] on the straight
  path to the noise eps (same shape as x), rectified flow's interpolant (Liu et al. 2022)."""
  t = _broadcast_time(t_bf, x)
  return (1.0 - t) * x + t * eps


def velocity_target(x: jax.Array, eps: jax.Array) -> jax.Array:
  """The flow-matching target eps - x (shape of x): the constant velocity dx_t/dt of
  `interpolate`'s path, which the model learns to predict."""
  return eps - x


def shift_time(u: jax.Array, shift: float) -> jax.Array:
  """t = s u / (1 + (s - 1) u): s > 1 moves mass to high noise, s < 1 to low noise."""
  return shift * u / (1.0 + (shift - 1.0) * u)


def sample_time(rng: jax.Array, shape: tuple[int, ...], shift: float = 1.0) -> jax.Array:
  """Shifted logit-normal: u = sigmoid(n), n ~ N(0, 1), then `shift_time`."""
  u = jax.nn.sigmoid(jax.random.normal(rng, shape))
  return shift_time(u, shift)


def step_times(num_steps: int, shift: float = 1.0, t_start: float | jax.Array = 1.0) -> jax.Array:
  """Euler grid from t_start down to 0 ([..., num_steps + 1]); the shift spends more steps
  at high noise when > 1. An array t_start (e.g. one per video) gives one grid per entry.

  Its first num_steps points are also Self Forcing's warped few-step list (spec 1.2): the raw
  uniform list 1 - k/K warped to shift_time(1 - k/K, shift), e.g. K = 4, shift 5:
  [1, 0.9375, 0.8333, 0.625]; the few-step sampler's last prediction lands on the final 0."""
  u = jnp.linspace(1.0, 0.0, num_steps + 1)
  grid = shift_time(u, shift)
  t_start = jnp.asarray(t_start, jnp.float32)
  return t_start[..., None] * grid


def euler_step(x_t: jax.Array, velocity: jax.Array, t_now_bf: jax.Array, t_next_bf: jax.Array):
  """x moves along dx/dt = v, from t_now to t_next (t decreasing towards data)."""
  dt = _broadcast_time(t_next_bf - t_now_bf, x_t)
  return x_t + dt * velocity


PREDICTIONS = ("velocity", "data")
# Below this t the data prediction's velocity (x_t - x) / t would divide by almost nothing.
MIN_DATA_PREDICTION_TIME = 0.05


def velocity_from_prediction(prediction: str, output, x_t, t_bf):
  """The velocity a network output stands for: itself, or (x_t - x) / t for a data output."""
  if prediction == "velocity":
    return output
  if prediction == "data":
    t = _broadcast_time(jnp.maximum(t_bf, MIN_DATA_PREDICTION_TIME), x_t)
    return (x_t.astype(jnp.float32) - output) / t
  raise ValueError(f"prediction={prediction!r} is unknown; allowed: {', '.join(PREDICTIONS)}")


def data_from_velocity(prediction: str, velocity, x_t, t_bf):
  """The clean frame x0 = x_t - t v that a network's velocity stands for (Self Forcing works on
  x0 predictions, spec 1.4). It undoes `velocity_from_prediction`: for a "data" output the time
  is floored the same way, so this gives back that output (up to rounding). Raises ValueError for
  an unknown prediction."""
  if prediction not in PREDICTIONS:
    raise ValueError(f"prediction={prediction!r} is unknown; allowed: {', '.join(PREDICTIONS)}")
  if prediction == "data":
    t_bf = jnp.maximum(t_bf, MIN_DATA_PREDICTION_TIME)
  return x_t.astype(jnp.float32) - _broadcast_time(t_bf, x_t) * velocity


LOSS_WEIGHTINGS = ("velocity", "data")


def loss_weight(weighting: str, t_bf: jax.Array) -> jax.Array:
  """Per-frame weight [B, F] of the squared velocity error in the flow-matching loss.

  "velocity" weighs every time alike. "data" weighs it by t^2, which makes the loss the squared
  error of the clean frame the velocity stands for (x0 - x0_hat = -t (v - v_hat)), with t floored
  as `velocity_from_prediction` floors it: a data-predicting network under the velocity loss is
  weighed by 1/t^2 instead, so the rare low-noise draws dominate its gradient while the
  high-noise ones, which decide where objects go, count least. Raises ValueError for an unknown
  weighting.
  """
  if weighting == "velocity":
    return jnp.ones_like(t_bf)
  if weighting == "data":
    return jnp.square(jnp.maximum(t_bf, MIN_DATA_PREDICTION_TIME))
  raise ValueError(f"loss weighting {weighting!r} is unknown; allowed: {', '.join(LOSS_WEIGHTINGS)}")


def sample_score_time(rng: jax.Array, shape: tuple[int, ...], shift: float,
                      clamp: tuple[float, float]) -> jax.Array:
  """Self Forcing's score timesteps (spec 2.2, in t = sigma units): u uniform on
  {0, 1/1000, ..., 999/1000}, t = shift_time(u, shift), clipped to `clamp`. With shift 5 and
  clamp (0.02, 0.98): median 0.833, 9.2 % of draws on 0.98 (u >= 0.908), 0.5 % on 0.02."""
  u = jax.random.randint(rng, shape, 0, 1000).astype(jnp.float32) / 1000.0
  return jnp.clip(shift_time(u, shift), *clamp)
