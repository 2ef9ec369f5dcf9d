"""Flow matching's path and its Euler integrator (videoar/diffusion/flow.py).

The samplers' tests compare one sampler with another built on the same `euler_step`, so a wrong
step would cancel there; here the step is checked against the path it integrates.
"""

import jax
import numpy as np
import pytest

from videoar.diffusion import flow


@pytest.mark.parametrize("num_steps,shift,t_start", [(1, 1.0, 1.0), (4, 3.0, 1.0), (7, 0.5, 0.6)])
def test_euler_steps_of_the_exact_velocity_stay_on_the_straight_path_to_the_data(
    num_steps, shift, t_start):
  """From interpolate(x, eps, t_start), Euler steps of the path's own velocity (eps - x) land on
  interpolate(x, eps, t) at every point of the grid, and on x at t = 0: a straight line is
  integrated exactly, whatever the grid."""
  x_key, eps_key = jax.random.split(jax.random.key(0))
  x = jax.random.normal(x_key, (2, 3, 4, 4, 1))
  eps = jax.random.normal(eps_key, x.shape)
  velocity = flow.velocity_target(x, eps)
  times = np.asarray(flow.step_times(num_steps, shift, t_start))
  assert times[0] == pytest.approx(t_start) and times[-1] == 0.0
  at = lambda t: np.full(x.shape[:2], t, np.float32)
  x_t = flow.interpolate(x, eps, at(times[0]))
  for t_now, t_next in zip(times[:-1], times[1:]):
    x_t = flow.euler_step(x_t, velocity, at(t_now), at(t_next))
    np.testing.assert_allclose(x_t, flow.interpolate(x, eps, at(t_next)), atol=1e-5)
  np.testing.assert_allclose(x_t, x, atol=1e-5)
