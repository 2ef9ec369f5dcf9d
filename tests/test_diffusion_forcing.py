"""Diffusion Forcing: an independent noise level per frame, and its flow-matching loss."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videoar import base_config, experiment, validate
from videoar.attention import masks
from videoar.diffusion import flow
from videoar.forcing import common, diffusion_forcing

# The resampling tests' tiny causal DiT and its perturbed parameters.
from test_resampling import MODEL, N, _setup

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import bouncing_tiny  # noqa: E402

B = 2  # the batch of test_resampling._setup
OPTIONS = dict(time_shift=1.0, cond_drop_prob=0.0)


def test_noise_levels_are_drawn_independently_per_frame(monkeypatch):
  """The t_bf the loss is computed at: [B, N], every frame of a video at its own level, the
  (B, N) draw from loss_fn's time key (not one level per video broadcast over its frames)."""
  batch, params = _setup()
  rng = jax.random.key(3)
  seen = []
  flow_loss = common.flow_loss

  def recording(v, video, eps, t_bf, weighting):
    seen.append(t_bf)
    return flow_loss(v, video, eps, t_bf, weighting)

  monkeypatch.setattr(common, "flow_loss", recording)
  diffusion_forcing.loss_fn(MODEL, params, batch, rng, chunk=2, **OPTIONS)
  (t_bf,) = seen
  t_bf = np.asarray(t_bf)
  assert t_bf.shape == (B, N)
  assert np.all(np.ptp(t_bf, axis=1) > 1e-2), t_bf  # frames within a video differ
  assert len(np.unique(t_bf)) == B * N, t_bf  # within a chunk (chunk=2) too
  _, time_rng, _ = jax.random.split(rng, 3)
  np.testing.assert_array_equal(t_bf, np.asarray(flow.sample_time(time_rng, (B, N), 1.0)))


@pytest.mark.parametrize("weighting", ["velocity", "data"])
def test_loss_is_the_flow_matching_loss_of_its_per_frame_draws(weighting):
  """loss_fn == the flow-matching loss recomputed by hand from the same keys: per-frame t from
  the time key, eps from the noise key, the model's velocity under the block-causal mask."""
  batch, params = _setup(1)
  rng = jax.random.key(5)
  chunk, shift = 2, 1.5
  loss, metrics = diffusion_forcing.loss_fn(MODEL, params, batch, rng, chunk=chunk,
                                            time_shift=shift, cond_drop_prob=0.0,
                                            loss_weighting=weighting)
  video = batch["video"]
  _, time_rng, noise_rng = jax.random.split(rng, 3)
  t_bf = flow.sample_time(time_rng, (B, N), shift)
  eps = jax.random.normal(noise_rng, video.shape)
  x_t = (1.0 - t_bf[..., None, None, None]) * video + t_bf[..., None, None, None] * eps
  v, _ = MODEL.apply(params, x_t, t_bf, frame_pos_f=jnp.arange(N),
                     mask=masks.BlockCausal(N, chunk))
  error_bf = jnp.mean(jnp.square(v - (eps - video)), axis=(2, 3, 4))
  weight_bf = jnp.ones_like(t_bf) if weighting == "velocity" else jnp.square(
      jnp.maximum(t_bf, flow.MIN_DATA_PREDICTION_TIME))
  expected = jnp.mean(weight_bf * error_bf)
  np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)
  assert float(metrics["loss"]) == float(loss)


def test_train_step_reports_the_diffusion_forcing_loss():
  """One step of the experiment's train step with paradigm diffusion_forcing: its loss equals
  diffusion_forcing.loss_fn at the step's key, fold_in(rng, 0), and the parameters move."""
  config = bouncing_tiny.get_config("test")
  base = base_config.get_config()
  config.forcing.paradigm = "diffusion_forcing"
  for key in ("resample_mode", "warmup_steps", "history_drop_prob"):  # keys DF does not read
    config.forcing[key] = base.forcing[key]
  config.model.previous_frame_input = False  # DF trains with no clean previous frame
  config.sample.guide_history = False  # guidance on a history DF never drops
  config.sample.guidance_scale = 1.0
  config.optim.warmup_steps = 0  # a learning rate above 0 at step 0
  config.model.fine_patch = 0  # smaller to compile
  config.data.batch_size = 2
  exp = experiment.build(config)
  train_step = experiment.make_train_step(exp)
  state = train_step.init(jax.random.key(0))
  params = jax.tree.map(np.asarray, state.params)  # a copy: the step donates the state
  batch = experiment.random_batch(exp)
  rng = jax.random.key(1)
  state, metrics = train_step.step(state, batch, rng)
  expected, _ = diffusion_forcing.loss_fn(
      exp.model, params, {k: jnp.asarray(v) for k, v in batch.items()},
      jax.random.fold_in(rng, 0), step=0, **validate.paradigm_options(config))
  np.testing.assert_allclose(float(metrics["loss"]), float(expected), rtol=1e-4)
  moved = [float(np.abs(np.asarray(a) - b).max())
           for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(params))]
  assert max(moved) > 0
