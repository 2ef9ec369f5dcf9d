"""Flow matching: t in [0, 1], t = 1 is pure noise, the model predicts the velocity eps - x."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _broadcast_time(t_bf: jax.Array, x: jax.Array) -> jax.Array:
  """Per-frame times [B, F] against frames [B, F, ...]."""
  return t_bf.reshape(t_bf.shape + (1,) * (x.ndim - t_bf.ndim))


def interpolate(x: jax.Array, eps: jax.Array, t_bf: jax.Array) -> jax.Array:
  t = _broadcast_time(t_bf, x)
  return (1.0 - t) * x + t * eps


def velocity_target(x: jax.Array, eps: jax.Array) -> jax.Array:
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
  at high noise when > 1. An array t_start (e.g. one per video) gives one grid per entry."""
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
