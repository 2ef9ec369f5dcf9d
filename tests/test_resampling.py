"""Resampling Forcing: its limits, its gradients and its use of the sampler's code path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from videoar import sampling
from videoar.attention import masks
from videoar.diffusion import flow
from videoar.forcing import resampling, teacher
from videoar.models import dit

MODEL = dit.CausalDiT(patch=4, width=32, depth=2, num_heads=2)
N = 4


def _setup(key=0):
  video = jax.random.normal(jax.random.key(key), (2, N, 8, 8, 3))
  params = MODEL.init(jax.random.key(key + 1), video, jnp.zeros((2, N)),
                      frame_pos_f=jnp.arange(N), mask=masks.BlockCausal(N))
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(key + 2), len(leaves))
  params = jax.tree.unflatten(
      tree, [p + 0.2 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
  return {"video": video}, params


OPTIONS = dict(chunk=1, time_shift=1.0, cond_drop_prob=0.0)


@pytest.mark.parametrize("mode", resampling.MODES)
def test_zero_resampling_noise_equals_teacher_forcing(mode):
  """With t_s = 0 (shift 0) the history is the clean video: loss and gradients are TF's."""
  batch, params = _setup()
  rng = jax.random.key(9)
  rf = lambda p: resampling.loss_fn(MODEL, p, batch, rng, step=jnp.asarray(100), resample_mode=mode,
                                    resample_shift=0.0, resample_steps=3, **OPTIONS)[0]
  tf = lambda p: teacher.loss_fn(MODEL, p, batch, rng, **OPTIONS)[0]
  rf_loss, rf_grads = jax.value_and_grad(rf)(params)
  tf_loss, tf_grads = jax.value_and_grad(tf)(params)
  np.testing.assert_allclose(rf_loss, tf_loss, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(rf_grads), jax.tree.leaves(tf_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_warmup_steps_are_teacher_forcing():
  batch, params = _setup()
  rng = jax.random.key(9)
  resample = dict(resample_mode="autoregressive", resample_shift=0.6, resample_steps=3)
  rf = resampling.loss_fn(MODEL, params, batch, rng, step=jnp.asarray(3), warmup_steps=10,
                          **resample, **OPTIONS)[0]
  tf = teacher.loss_fn(MODEL, params, batch, rng, **OPTIONS)[0]
  after = resampling.loss_fn(MODEL, params, batch, rng, step=jnp.asarray(10), warmup_steps=10,
                             **resample, **OPTIONS)[0]
  np.testing.assert_allclose(rf, tf, rtol=1e-6)
  assert abs(float(after) - float(tf)) > 1e-4


@pytest.mark.parametrize("mode", resampling.MODES)
def test_no_gradient_reaches_the_degraded_history(mode):
  """The gradient of the RF loss equals that of TF with the history frozen as a constant."""
  batch, params = _setup(1)
  rng = jax.random.key(4)
  options = dict(chunk=1, mode=mode, resample_shift=2.0, resample_steps=2)
  history, _ = resampling.degrade_history(MODEL, params, batch["video"], {},
                                          jax.random.fold_in(rng, 1), **options)
  assert float(jnp.abs(history - batch["video"]).max()) > 1e-3

  def grad_through(p):
    h, _ = resampling.degrade_history(MODEL, p, batch["video"], {},
                                      jax.random.fold_in(rng, 1), **options)
    return jnp.sum(h ** 2)

  for g in jax.tree.leaves(jax.grad(grad_through)(params)):
    assert float(jnp.abs(g).max()) == 0.0
  rf = lambda p: resampling.loss_fn(MODEL, p, batch, rng, step=jnp.asarray(1), resample_mode=mode,
                                    resample_shift=2.0, resample_steps=2, **OPTIONS)[0]
  frozen = lambda p: teacher.history_conditioned_loss(
      MODEL, p, history, batch["video"], {}, jax.random.split(rng)[1], chunk=1,
      time_shift=1.0)[0]
  for a, b in zip(jax.tree.leaves(jax.grad(rf)(params)), jax.tree.leaves(jax.grad(frozen)(params))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_autoregressive_resampling_equals_the_sampler_from_x_ts():
  batch, params = _setup(2)
  rng = jax.random.key(5)
  video = batch["video"]
  steps, shift = 3, 0.6
  history, _ = resampling.degrade_history(MODEL, params, video, {}, rng, chunk=1,
                                          mode="autoregressive", resample_shift=shift,
                                          resample_steps=steps)
  # The same draws, then the streaming sampler frame by frame from x_ts.
  time_rng, noise_rng = jax.random.split(rng)
  t_s = flow.sample_time(time_rng, (2,), shift)
  eps = jax.random.normal(noise_rng, video.shape)
  x_ts = flow.interpolate(video, eps, jnp.broadcast_to(t_s[:, None], (2, N)))
  sampler = sampling.Sampler(MODEL, frame_shape=(8, 8, 3), chunk=1, window=N)
  cache = sampler.init_cache(2)
  times = flow.step_times(steps, 1.0, t_s)
  frames = []
  for i in range(N):
    x0, cache = sampler.chunk_step(params, cache, x_ts[:, i:i + 1], times)
    frames.append(x0)
  np.testing.assert_allclose(np.asarray(history), np.asarray(jnp.concatenate(frames, 1)),
                             atol=1e-5)


def test_resampling_time_follows_the_shifted_logit_normal():
  shift = 0.6
  samples = np.asarray(flow.sample_time(jax.random.key(0), (20_000,), shift))

  def cdf(t):
    # Invert t = s u / (1 + (s - 1) u), then u = sigmoid(n) with n standard normal.
    u = t / (shift - (shift - 1.0) * t)
    return stats.norm.cdf(np.log(u) - np.log1p(-u))

  result = stats.kstest(samples, cdf)
  assert result.pvalue > 0.01, result
  assert not stats.kstest(np.asarray(flow.sample_time(jax.random.key(0), (20_000,), 1.0)),
                          cdf).pvalue > 0.01


def test_a_dropped_history_is_the_null_history_of_zeros_and_the_targets_stay_clean():
  """history_drop_prob 1 trains every video on the null history (zero frames, the previous-frame
  input included) that the sampler's history-guidance null pass reads; the loss's targets and
  draws are those of the same loss on a zero history."""
  model = dit.CausalDiT(patch=4, width=32, depth=2, num_heads=2, prediction="data",
                        previous_frame_input=True)
  video = jax.random.normal(jax.random.key(0), (2, N, 8, 8, 3))
  params = model.init(jax.random.key(1), video, jnp.zeros((2, N)), frame_pos_f=jnp.arange(N),
                      mask=masks.BlockCausal(N), previous_bfhwc=video)
  # Off the zero-initialised output layer, so that the output depends on the history.
  params = jax.tree.map(lambda p: p + 0.2 * jax.random.normal(jax.random.key(2), p.shape),
                        params)
  rng = jax.random.key(3)
  loss = lambda history, p: teacher.history_conditioned_loss(
      model, params, history, video, {}, rng, chunk=1, time_shift=1.0, history_drop_prob=p)[0]
  np.testing.assert_allclose(loss(video, 1.0), loss(jnp.zeros_like(video), 0.0), rtol=1e-6)
  assert abs(float(loss(video, 1.0)) - float(loss(video, 0.0))) > 1e-4


@pytest.mark.parametrize("fine_patch", [0, 2])
def test_two_n_layout_outputs_equal_the_noisy_half_of_the_whole_output(fine_patch):
  """apply_two_n computes outputs for the noisy frames only (outputs_from): they must equal the
  noisy half of the model's output over all 2N frames, and the history's keys must not change."""
  model = dit.CausalDiT(patch=4, width=32, depth=2, num_heads=2, prediction="data",
                        previous_frame_input=True, fine_patch=fine_patch, fine_width=32)
  video = jax.random.normal(jax.random.key(0), (2, N, 8, 8, 3))
  x_t = jax.random.normal(jax.random.key(1), video.shape)
  t = jax.random.uniform(jax.random.key(2), (2, N))
  previous = jnp.concatenate([dit.previous_frames(video, 1, within_history=True),
                              dit.previous_frames(video, 1, within_history=False)], axis=1)
  kwargs = dict(frame_pos_f=jnp.tile(jnp.arange(N), 2), mask=masks.TeacherForcing(N),
                previous_bfhwc=previous)
  both = jnp.concatenate([video, x_t], axis=1)
  t_both = jnp.concatenate([jnp.zeros_like(t), t], axis=1)
  params = model.init(jax.random.key(3), both, t_both, **kwargs)
  params = jax.tree.map(lambda p: p + 0.2 * jax.random.normal(jax.random.key(4), p.shape), params)
  whole, whole_kv = model.apply(params, both, t_both, **kwargs)
  noisy, kv = teacher.apply_two_n(model, params, video, x_t, t, {}, chunk=1)
  assert noisy.shape == video.shape
  np.testing.assert_allclose(np.asarray(noisy), np.asarray(whole[:, N:]), atol=1e-5, rtol=0)
  np.testing.assert_array_equal(np.asarray(kv[0]), np.asarray(whole_kv[0]))


def test_history_time_input_labels_the_noised_history_with_its_level():
  """With history_time_input the loss is the history-conditioned loss on the noise-augmented
  history with its level t_s (the draw degrade_history makes) as its time; the label changes
  the loss; in the warm-up the history is clean and labelled 0, Teacher Forcing's."""
  batch, params = _setup()
  rng = jax.random.key(9)
  options = dict(resample_mode="noise_augmentation", resample_shift=2.0, resample_steps=3,
                 **OPTIONS)
  loss = lambda labelled, step=1: resampling.loss_fn(
      MODEL, params, batch, rng, step=jnp.asarray(step), warmup_steps=1,
      history_time_input=labelled, **options)[0]
  history, t_s = resampling.degrade_history(MODEL, params, batch["video"], {},
                                            jax.random.fold_in(rng, 1), chunk=1,
                                            mode="noise_augmentation", resample_shift=2.0,
                                            resample_steps=3)
  assert float(t_s.min()) > 0.0
  expected = teacher.history_conditioned_loss(
      MODEL, params, history, batch["video"], {}, jax.random.split(rng)[1], chunk=1,
      time_shift=1.0, history_t_b=t_s)[0]
  np.testing.assert_allclose(loss(True), expected, rtol=1e-6)
  assert abs(float(loss(True)) - float(loss(False))) > 1e-4
  np.testing.assert_allclose(loss(True, step=0), teacher.loss_fn(MODEL, params, batch, rng,
                                                                 **OPTIONS)[0], rtol=1e-6)
  with pytest.raises(ValueError, match="noise_augmentation"):
    resampling.loss_fn(MODEL, params, batch, rng, step=jnp.asarray(1), history_time_input=True,
                       resample_mode="parallel", resample_shift=0.6, resample_steps=3,
                       **OPTIONS)


def test_a_labelled_history_in_training_is_the_samplers_cache_at_its_history_time():
  """Training rollout == sampler, with labels: noisy frame i of the 2N layout over a history
  labelled t_c (apply_two_n's history_t_bf) gets the velocity the sampler gives it over a cache
  whose frames were generated and written at history_time t_c; at t_c = 0 it would differ."""
  model = dit.CausalDiT(patch=4, width=32, depth=2, num_heads=2, prediction="data",
                        previous_frame_input=True)
  params = model.init(jax.random.key(1), jnp.zeros((2, 2 * N, 8, 8, 3)), jnp.zeros((2, 2 * N)),
                      frame_pos_f=jnp.tile(jnp.arange(N), 2), mask=masks.TeacherForcing(N),
                      previous_bfhwc=jnp.zeros((2, 2 * N, 8, 8, 3)))
  params = jax.tree.map(lambda p: p + 0.2 * jax.random.normal(jax.random.key(4), p.shape), params)
  t_c, steps = 0.3, 2
  times = jnp.broadcast_to(flow.step_times(steps, 1.0), (2, steps + 1))
  noise = jax.random.normal(jax.random.key(5), (2, N, 8, 8, 3))
  x_t = jax.random.normal(jax.random.key(6), (2, N, 8, 8, 3))
  t = jnp.full((2, N), 0.7)

  def sampler_velocities(history_time):
    sampler = sampling.Sampler(model, frame_shape=(8, 8, 3), chunk=1, window=N,
                               history_time=history_time)
    frames, cache, velocities = [], sampler.init_cache(2), []
    for i in range(N):
      velocities.append(sampler.velocity(params, cache, x_t[:, i:i + 1], t[:, i:i + 1]))
      x0, cache = sampler.chunk_step(params, cache, noise[:, i:i + 1], times)
      frames.append(x0)
    return jnp.concatenate(frames, 1), jnp.concatenate(velocities, 1)

  generated, cached = sampler_velocities(t_c)
  two_n, _ = teacher.apply_two_n(model, params, generated, x_t, t, {}, chunk=1,
                                 history_t_bf=jnp.full((2, N), t_c))
  np.testing.assert_allclose(np.asarray(cached), np.asarray(two_n), atol=1e-4, rtol=0)
  unlabelled, _ = teacher.apply_two_n(model, params, generated, x_t, t, {}, chunk=1)
  assert float(jnp.abs(unlabelled - two_n)[:, 1:].max()) > 1e-3


@pytest.mark.parametrize("steps", [1, 2])
def test_parallel_resampling_is_euler_from_x_ts_on_the_clean_history(steps):
  """degrade_history(mode="parallel") == Euler steps from x_ts to 0 of apply_two_n's velocity
  with the clean video as history, from the same draws of t_s and eps."""
  batch, params = _setup(3)
  rng = jax.random.key(6)
  video = batch["video"]
  shift = 2.0
  history, t_s = resampling.degrade_history(MODEL, params, video, {}, rng, chunk=1,
                                            mode="parallel", resample_shift=shift,
                                            resample_steps=steps)
  time_rng, noise_rng = jax.random.split(rng)
  expected_t_s = flow.sample_time(time_rng, (2,), shift)
  np.testing.assert_array_equal(np.asarray(t_s), np.asarray(expected_t_s))
  assert float(t_s.min()) > 0.05
  eps = jax.random.normal(noise_rng, video.shape)
  x = flow.interpolate(video, eps, jnp.broadcast_to(t_s[:, None], (2, N)))
  times = flow.step_times(steps, 1.0, t_s)  # [2, steps + 1], from t_s down to 0
  for i in range(steps):
    t_now, t_next = times[:, i, None], times[:, i + 1, None]
    v, _ = teacher.apply_two_n(MODEL, params, video, x, jnp.broadcast_to(t_now, (2, N)), {},
                               chunk=1)
    x = x + (t_next - t_now)[..., None, None, None] * v
  np.testing.assert_allclose(np.asarray(history), np.asarray(x), atol=1e-5, rtol=0)
