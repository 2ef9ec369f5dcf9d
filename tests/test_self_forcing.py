"""Self Forcing: the schedule, the training rollout against the inference sampler, where gradient
flows, the exit step, DMD / SiD and the generator/critic isolation (spec 9.3). The GAN variant:
tests/test_self_forcing_gan.py."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videoar import sampling
from videoar.attention import masks
from videoar.diffusion import flow
from videoar.forcing import ode_regression, self_forcing
from videoar.models import dit

B, F, C, K = 2, 6, 2, 4
FRAME = (8, 8, 3)
MODEL = dit.CausalDiT(patch=4, width=32, depth=1, num_heads=2, num_classes=3)
OPTIONS = self_forcing.Options(num_frames=F, frame_shape=FRAME, chunk=C, num_steps=K)
LABELS = np.array([0, 2])
COND = {"labels_b": LABELS}
# Compiling dominates this file: set-up and assertions use numpy, compiled functions are shared
# between tests, and XLA's backend optimisations, half of each compile, are off.
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _params(seed, model=MODEL):
  """Random parameters N(0, 0.2^2), about the scale of the initialisation (whose zero output
  layers would make every output zero), drawn by numpy: shapes only, nothing to compile."""
  init = lambda rng, x, t: model.init(rng, x, t, frame_pos_f=np.arange(F), mask=masks.Full(F),
                                      labels_b=LABELS, previous_bfhwc=x)
  shapes = jax.eval_shape(init, jax.random.key(0),
                          jax.ShapeDtypeStruct((B, F) + FRAME, jnp.float32),
                          jax.ShapeDtypeStruct((B, F), jnp.float32))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: (0.2 * rng.normal(size=a.shape)).astype(np.float32), shapes)


def _normal(seed):
  return np.random.default_rng(seed).normal(size=(B, F) + FRAME).astype(np.float32)


GEN, TEACHER, CRITIC = _params(0), _params(1), _params(2)
Z, W = _normal(3), _normal(4)  # start noise, a cotangent
TIMES = np.asarray(_jit(self_forcing.step_times, static_argnums=0)(OPTIONS))


def _max_abs(tree):
  return max(np.abs(g).max() for g in jax.tree.leaves(tree))


@_jit
def _exit_and_renoise_key(rng):
  """The exit step a training rollout keyed by `rng` draws, and its re-noising key."""
  exit_rng, renoise_rng = jax.random.split(rng)
  return self_forcing.draw_exit_step(exit_rng, K), renoise_rng


def _key_with_exit(s):
  """(A step key whose training rollout exits at step s, that rollout's re-noising key)."""
  for i in range(1000):
    rng = jax.random.key(100 + i)
    exit_step, renoise_rng = _exit_and_renoise_key(rng)
    if int(exit_step) == s:
      return rng, renoise_rng
  raise AssertionError(s)


@_jit
def _xi(renoise_rng, i, k):
  """The re-noising of chunk i after step k."""
  return jax.random.normal(jax.random.fold_in(jax.random.fold_in(renoise_rng, i), k),
                           (B, C) + FRAME)


@functools.cache
def _training_rollout_vjp():
  """(video, s, d<W, video>/d params, d<W, video>/d z) of the training rollout: one compile
  shared by T3-T6."""

  def fn(params, z, rng):
    rollout = lambda p, z: self_forcing.training_rollout(MODEL, p, z, COND, rng, OPTIONS)
    video, vjp, s = jax.vjp(rollout, params, z, has_aux=True)
    return (video, s) + vjp(W)

  return _jit(fn)


@_jit
def _apply(params, x_bfhwc, t_bf):
  n = x_bfhwc.shape[1]
  v, _ = MODEL.apply(params, x_bfhwc, t_bf, frame_pos_f=jnp.arange(n),
                     mask=masks.BlockCausal(n, C), labels_b=LABELS)
  return v


def _recompute(params, z, renoise_rng, s, apply=_apply):
  """No cache: every model call reruns all clean chunks so far (at t = 0) plus the chunk, with
  the few-step rule written out; chunk i re-noises after step k with
  normal(fold_in(fold_in(renoise_rng, i), k)). `apply` gives the velocity."""
  clean = z[:, :0]
  for i in range(F // C):
    start = i * C
    x = z[:, start:start + C]
    for k in range(s + 1):
      t = np.concatenate([np.zeros((B, start)), np.full((B, C), TIMES[k])], axis=1)
      v = np.asarray(apply(params, np.concatenate([clean, x], axis=1), t))[:, start:]
      x0 = x - TIMES[k] * v
      if k < s:
        x = (1 - TIMES[k + 1]) * x0 + TIMES[k + 1] * np.asarray(_xi(renoise_rng, i, k))
    clean = np.concatenate([clean, x0], axis=1)
  return clean


# --- T1 ----------------------------------------------------------------------------------------

def test_schedule_warped_list_renoise_and_score_times():
  np.testing.assert_allclose(TIMES, [1.0, 0.9375, 0.833333, 0.625, 0.0], rtol=1e-6)
  x, xi = Z[:, :C], W[:, :C]
  # Context noise 0 is no noise: re-noising to t = 0 is the identity, exactly.
  np.testing.assert_array_equal(flow.interpolate(x, xi, np.zeros((B, C), np.float32)), x)
  t = np.array([[0.03, 0.03], [0.7, 0.7]], np.float32)  # below and above the data floor
  round_trip = _jit(lambda prediction, out: flow.data_from_velocity(
      prediction, flow.velocity_from_prediction(prediction, out, xi, t), xi, t), static_argnums=0)
  np.testing.assert_allclose(round_trip("data", x), x, atol=1e-6)
  # A velocity output v stands for x0 = x_t - t v.
  np.testing.assert_allclose(round_trip("velocity", x), xi - t[:, :, None, None, None] * x,
                             atol=1e-6)

  n = 40_000
  t = np.asarray(_jit(flow.sample_score_time, static_argnums=(1, 2, 3))(
      jax.random.key(2), (n,), 5.0, (0.02, 0.98)))
  assert t.min() == np.float32(0.02) and t.max() == np.float32(0.98)
  # u >= 0.908 warps past 0.98: 92 of the 1000 values of u, within 3 binomial sigmas.
  p = 0.092
  assert abs(np.mean(t == np.float32(0.98)) - p) < 3 * np.sqrt(p * (1 - p) / n)
  assert abs(np.median(t) - 0.833) < 0.01


# --- T4, T6 ------------------------------------------------------------------------------------

@pytest.mark.parametrize("s", range(K))
def test_training_rollout_equals_the_sampler_cut_to_its_first_steps(s):
  """The exit-s rollout is the inference sampler over [t_0 .. t_s, 0] with the same noise, and
  both equal the cache-free recomputation; s is the one drawn from the step's key (T6)."""
  rng, renoise_rng = _key_with_exit(s)
  video, exit_step, _, _ = _training_rollout_vjp()(GEN, Z, rng)
  assert exit_step.shape == () and int(exit_step) == s
  sampler = self_forcing.make_sampler(MODEL, OPTIONS)
  cut = np.broadcast_to(np.append(TIMES[:s + 1], np.float32(0)), (B, s + 2))
  inference, _ = _jit(sampler.rollout)(GEN, sampler.init_cache(B), Z, cut, COND, renoise_rng)
  np.testing.assert_allclose(video, inference, atol=1e-5, rtol=0)
  np.testing.assert_allclose(video, _recompute(GEN, Z, renoise_rng, s), atol=1e-5, rtol=0)
  assert np.abs(video).max() > 0.1


def test_a_student_reading_its_previous_frame_rolls_out_as_sampled_and_as_ode_regressed():
  """A generator with the previous-frame input (its teacher and critic have none): the training
  rollout is the sampler's, and both equal the recomputation whose previous-frame inputs are
  ode_regression.previous_inputs of the clean chunks so far, so ODE regression trains the student
  on what the sampler will feed it."""
  student = MODEL.clone(previous_frame_input=True)
  params = _params(5, student)
  s = K - 1
  rng, renoise_rng = _key_with_exit(s)
  video, exit_step = _jit(lambda p, z, rng: self_forcing.training_rollout(
      student, p, z, COND, rng, OPTIONS))(params, Z, rng)
  assert int(exit_step) == s
  sampler = self_forcing.make_sampler(student, OPTIONS)
  inference, _ = _jit(sampler.rollout)(params, sampler.init_cache(B), Z,
                                       np.broadcast_to(TIMES, (B, K + 1)), COND, renoise_rng)
  np.testing.assert_allclose(video, inference, atol=1e-5, rtol=0)

  @_jit
  def apply(params, x_bfhwc, t_bf):
    n = x_bfhwc.shape[1]
    previous = ode_regression.previous_inputs(x_bfhwc, t_bf, C)
    v, _ = student.apply(params, x_bfhwc, t_bf, frame_pos_f=jnp.arange(n),
                         mask=masks.BlockCausal(n, C), labels_b=LABELS, previous_bfhwc=previous)
    return v

  np.testing.assert_allclose(video, _recompute(params, Z, renoise_rng, s, apply), atol=1e-5,
                             rtol=0)

  @_jit
  def apply_without_previous(params, x_bfhwc, t_bf):
    n = x_bfhwc.shape[1]
    v, _ = student.apply(params, x_bfhwc, t_bf, frame_pos_f=jnp.arange(n),
                         mask=masks.BlockCausal(n, C), labels_b=LABELS,
                         previous_bfhwc=jnp.zeros_like(x_bfhwc))
    return v

  # The input is read: the same rollout with blank previous frames differs.
  blank = _recompute(params, Z, renoise_rng, s, apply_without_previous)
  assert np.abs(video - blank).max() > 1e-2


def test_guided_generate_with_the_few_step_solver_is_the_full_rollout():
  """generate runs all K steps from z = normal(key), re-noising with fold_in(key, 1): the
  rollout at s = K - 1 with that noise, here over the guided velocity (CFG as in Euler); stream
  runs the same chunk step."""
  key = jax.random.key(7)
  scale = 2.5
  guided = sampling.Sampler(MODEL, frame_shape=FRAME, chunk=C, window=F, guidance_scale=scale,
                            solver="few_step")
  generated = guided.generate(GEN, key, F, K, OPTIONS.warp_shift, cond=COND)
  z, renoise_rng = _jit(lambda key: (jax.random.normal(key, (B, F) + FRAME),
                                        jax.random.fold_in(key, 1)))(key)
  null = np.full_like(LABELS, MODEL.num_classes)

  @_jit
  def guided_apply(params, x, t):
    n = x.shape[1]
    call = lambda labels: MODEL.apply(params, x, t, frame_pos_f=jnp.arange(n),
                                      mask=masks.BlockCausal(n, C), labels_b=labels)[0]
    v_cond, v_null = call(LABELS), call(null)
    return v_null + scale * (v_cond - v_null)

  reference = _recompute(GEN, np.asarray(z), renoise_rng, K - 1, guided_apply)
  np.testing.assert_allclose(generated, reference, atol=1e-5, rtol=0)
  # Streaming with the few-step solver: one compiled chunk step, past the window.
  chunks = list(guided.stream(GEN, key, 2 * F, K, OPTIONS.warp_shift, cond=COND, batch=B))
  assert [c.shape for c in chunks] == [(B, C) + FRAME] * (2 * F // C)
  assert all(np.isfinite(c).all() for c in chunks)
  assert guided._jit_chunk_step._cache_size() == 1


def test_exit_step_is_uniform_over_the_steps():
  """One scalar per key (so shared by chunks, videos and devices), uniform on {0..K-1}."""
  n = 4000
  draw = _jit(lambda key: jax.vmap(lambda k: self_forcing.draw_exit_step(k, K))(
      jax.random.split(key, n)))
  s = np.asarray(draw(jax.random.key(0)))
  counts = np.bincount(s, minlength=K)
  assert counts.size == K
  p = 1.0 / K
  np.testing.assert_array_less(np.abs(counts - n * p), 3 * np.sqrt(n * p * (1 - p)))


# --- T5, T3 ------------------------------------------------------------------------------------

@functools.cache
def _exit_forward_vjp():
  sampler = self_forcing.make_sampler(MODEL, OPTIONS)

  def fn(params, cache, x, t, w):
    exit_forward = lambda p: sampler.data_prediction(p, cache, x, t, COND)
    out, vjp = jax.vjp(exit_forward, params)
    return out, vjp(w)[0]

  return (_jit(fn), _jit(sampler.data_prediction), _jit(sampler.write_chunk),
          _jit(functools.partial(sampler.init_cache, B)))


@pytest.mark.parametrize("s", [0, 2, 3])
def test_only_the_exit_forwards_carry_gradient(s):
  """d<W, video>/d params is the sum over chunks of the VJP of that chunk's exit forward alone,
  its input and cache held constant; nothing reaches the start noise."""
  rng, renoise_rng = _key_with_exit(s)
  video, _, grad_params, grad_z = _training_rollout_vjp()(GEN, Z, rng)
  exit_vjp, predict, write, init_cache = _exit_forward_vjp()
  cache = init_cache()
  t = lambda k: np.full((B, C), TIMES[k])
  expected = jax.tree.map(np.zeros_like, GEN)
  for i in range(F // C):
    x = Z[:, i * C:(i + 1) * C]
    for k in range(s):
      x0 = np.asarray(predict(GEN, cache, x, t(k), COND))
      x = (1 - TIMES[k + 1]) * x0 + TIMES[k + 1] * np.asarray(_xi(renoise_rng, i, k))
    out, grad = exit_vjp(GEN, cache, x, t(s), W[:, i * C:(i + 1) * C])
    np.testing.assert_allclose(video[:, i * C:(i + 1) * C], out, atol=1e-5, rtol=0)
    expected = jax.tree.map(lambda a, b: a + np.asarray(b), expected, grad)
    cache = write(GEN, cache, out, COND)
  for got, want in zip(jax.tree.leaves(grad_params), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
  assert _max_abs(grad_params) > 1e-3
  assert _max_abs(grad_z) == 0.0


def test_a_chunks_noise_changes_no_earlier_chunk():
  rng, _ = _key_with_exit(K - 1)
  video, *_ = _training_rollout_vjp()(GEN, Z, rng)
  for j in range(1, F // C):
    z = Z.copy()
    z[:, j * C:] += 1.0
    perturbed, *_ = _training_rollout_vjp()(GEN, z, rng)
    np.testing.assert_array_equal(perturbed[:, :j * C], video[:, :j * C])
    assert np.abs(perturbed[:, j * C:] - video[:, j * C:]).max() > 1e-3


# --- T7 ----------------------------------------------------------------------------------------

def _three_videos(seed):
  return _normal(seed), _normal(seed + 1), _normal(seed + 2)


def test_dmd_gradient_is_the_normalised_score_difference():
  x, real, fake = _three_videos(10)
  dmd = _jit(jax.value_and_grad(self_forcing.dmd_generator_loss, has_aux=True))
  (loss, metrics), grad = dmd(x, real, fake)
  norm = np.mean(np.abs(x - real), axis=(1, 2, 3, 4), keepdims=True)
  g = (fake - real) / norm
  np.testing.assert_allclose(grad, g / x.size, rtol=1e-5, atol=1e-9)
  np.testing.assert_allclose(loss, 0.5 * np.mean(np.square(g)), rtol=1e-5)
  np.testing.assert_allclose(metrics["dmd_gradient_norm"], np.mean(np.abs(g)), rtol=1e-5)
  # Per sample: scaling video 1 with both its predictions leaves its g alone.
  scale = np.array([1.0, 7.0], np.float32)[:, None, None, None, None]
  _, scaled = dmd(x * scale, real * scale, fake * scale)
  np.testing.assert_allclose(scaled, grad, rtol=1e-4, atol=1e-9)
  # Both scores agreeing with a video equal to them: g = 0 / 0, made 0 by nan_to_num.
  _, zero = dmd(real, real, real)
  np.testing.assert_array_equal(zero, 0.0)


@_jit
def _scores(x_t, t_b):
  real = self_forcing.real_score(MODEL, TEACHER, x_t, t_b, COND, 3.0)
  cond = self_forcing.fake_score(MODEL, TEACHER, x_t, t_b, COND)
  uncond = self_forcing.fake_score(MODEL, TEACHER, x_t, t_b, MODEL.null_conditioning(COND))
  v, _ = MODEL.apply(TEACHER, x_t, jnp.broadcast_to(t_b[:, None], (B, F)),
                     frame_pos_f=jnp.arange(F), mask=masks.Full(F), **COND)
  return real, cond, uncond, v


def test_real_score_guidance_is_cond_plus_g_times_cond_minus_uncond():
  x_t, t_b = Z, np.array([0.3, 0.9], np.float32)
  real, cond, uncond, v = jax.tree.map(np.asarray, _scores(x_t, t_b))
  # One doubled batch against two calls: rounding (1e-5 of values up to 20) times 1 + 2 g.
  np.testing.assert_allclose(real, cond + 3.0 * (cond - uncond), atol=1e-4, rtol=0)
  assert np.abs(cond - uncond).max() > 1e-3
  # The score is a bidirectional x0 prediction: x_t - t v with the full mask, one t per video.
  np.testing.assert_allclose(cond, x_t - t_b[:, None, None, None, None] * v, atol=1e-5)


def test_sid_loss_value_and_its_gradient_through_the_scores():
  x, real, fake = _three_videos(20)
  loss, _ = self_forcing.sid_generator_loss(x, real, fake)
  norm = np.mean(np.abs(x - real), axis=(1, 2, 3, 4), keepdims=True)
  alpha = 1.0
  expected = np.mean((real - fake) * ((real - x) - alpha * (real - fake)) / norm)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)

  eps, t_b = W, np.array([0.5, 0.8], np.float32)

  @_jit
  @functools.partial(jax.grad, has_aux=True)
  def grad(x):
    x_t = flow.interpolate(x, eps, jnp.broadcast_to(t_b[:, None], (B, F)))
    real = self_forcing.real_score(MODEL, TEACHER, x_t, t_b, COND, 3.0)
    fake = self_forcing.fake_score(MODEL, CRITIC, x_t, t_b, COND)
    return self_forcing.sid_generator_loss(x, real, fake)[0], (real, fake)

  through_scores, (r, f) = jax.tree.map(np.asarray, grad(x))
  # The gradient with both scores held constant; the one through their inputs differs from it.
  n = np.mean(np.abs(x - r), axis=(1, 2, 3, 4), keepdims=True)
  direct = -(r - f) / n / x.size
  assert np.abs(through_scores - direct).max() > 0.1 * np.abs(direct).max()


# --- T8 ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("loss", ["dmd", "sid"])  # GAN: tests/test_self_forcing_gan.py
def test_generator_loss_trains_the_generator_only(loss):
  options = self_forcing.Options(num_frames=F, frame_shape=FRAME, chunk=C, loss=loss)
  batch = {"video": np.zeros((B, F) + FRAME, np.float32), "label": LABELS}

  @_jit
  def grads(gen, critic, rng):
    fn = lambda gen, critic: self_forcing.generator_loss(MODEL, gen, MODEL, TEACHER, MODEL,
                                                         critic, batch, rng, options)
    return jax.value_and_grad(fn, argnums=(0, 1), has_aux=True)(gen, critic)

  (value, metrics), (to_gen, to_critic) = grads(GEN, CRITIC, jax.random.key(0))
  assert np.isfinite(value) and 0 <= int(metrics["exit_step"]) < K
  assert 0.02 <= float(metrics["score_time"]) <= 0.98
  assert _max_abs(to_gen) > 0.0
  assert _max_abs(to_critic) == 0.0


def test_critic_loss_trains_the_critic_only():
  batch = {"video": np.zeros((B, F) + FRAME, np.float32), "label": LABELS}

  @_jit
  def grads(gen, critic, rng):
    fn = lambda gen, critic: self_forcing.critic_loss(MODEL, gen, MODEL, critic, batch, rng,
                                                      OPTIONS)
    return jax.value_and_grad(fn, argnums=(0, 1), has_aux=True)(gen, critic)

  (value, metrics), (to_gen, to_critic) = grads(GEN, CRITIC, jax.random.key(0))
  assert np.isfinite(value) and value == metrics["critic_loss"]
  assert _max_abs(to_gen) == 0.0
  assert _max_abs(to_critic) > 0.0


# --- the loss values against their hand computation --------------------------------------------

BATCH = {"video": np.zeros((B, F) + FRAME, np.float32), "label": LABELS}
LOSS_KEY = jax.random.key(0)


@_jit
def _loss_draws(rng):
  """(start noise z, rollout key, score time t_b [B], score noise eps) that a generator or critic
  loss keyed by `rng` draws: rng split in 4 for z, the rollout, t and eps."""
  noise_rng, rollout_rng, time_rng, eps_rng = jax.random.split(rng, 4)
  shape = (B, F) + FRAME
  t_b = flow.sample_score_time(time_rng, (B,), OPTIONS.score_shift, OPTIONS.score_clamp)
  return (jax.random.normal(noise_rng, shape), rollout_rng, t_b,
          jax.random.normal(eps_rng, shape))


@_jit
def _full_velocity(params, x_t, t_b, labels):
  """A score network's velocity on whole videos: full mask, one t per video."""
  v, _ = MODEL.apply(params, x_t, jnp.broadcast_to(t_b[:, None], (B, F)),
                     frame_pos_f=jnp.arange(F), mask=masks.Full(F), labels_b=labels)
  return v


def _noised_at(video, eps, t_b):
  """(1 - t) x + t eps with t = t_b of each video, in numpy."""
  t = t_b[:, None, None, None, None]
  return (1 - t) * video + t * eps


def _hand_dmd(video, eps, t_b):
  """(x0_real, x0_fake, g) by hand: x0 = x_t - t v of the teacher (guided cond + 3 (cond -
  uncond)) and of the critic at x_t = (1 - t) x + t eps; g = (fake - real) / mean |x - real|."""
  x_t = _noised_at(video, eps, t_b)
  t = t_b[:, None, None, None, None]
  x0 = lambda params, labels: x_t - t * np.asarray(_full_velocity(params, x_t, t_b, labels))
  cond, uncond = x0(TEACHER, LABELS), x0(TEACHER, np.full_like(LABELS, MODEL.num_classes))
  real = cond + OPTIONS.real_guidance * (cond - uncond)
  fake = x0(CRITIC, LABELS)
  g = (fake - real) / np.mean(np.abs(video - real), axis=(1, 2, 3, 4), keepdims=True)
  return real, fake, g


def _draws_and_rollout():
  """The loss key's draws (t_b, eps) and its generator rollout, all numpy."""
  z, rollout_rng, t_b, eps = _loss_draws(LOSS_KEY)
  video, *_ = _training_rollout_vjp()(GEN, np.asarray(z), rollout_rng)
  t_b = np.asarray(t_b)
  # Times far from 1/2 and from each other: noising at 1 - t instead of t would show.
  assert np.all(np.abs(t_b - 0.5) > 0.1) and abs(t_b[0] - t_b[1]) > 1e-3
  return np.asarray(video), t_b, np.asarray(eps)


def test_critic_loss_is_flow_matching_on_the_noised_rollout():
  """critic_loss against mean((v_critic(x_t, t) - (eps - x))^2) by hand, x_t = (1 - t) x + t eps,
  x the rollout, t and eps the loss's own draws."""
  video, t_b, eps = _draws_and_rollout()
  loss, metrics = _jit(lambda gen, critic, rng: self_forcing.critic_loss(
      MODEL, gen, MODEL, critic, BATCH, rng, OPTIONS))(GEN, CRITIC, LOSS_KEY)
  v = np.asarray(_full_velocity(CRITIC, _noised_at(video, eps, t_b), t_b, LABELS))
  expected = np.mean(np.square(v - (eps - video)))
  np.testing.assert_allclose(loss, expected, rtol=1e-4)
  assert float(metrics["critic_loss"]) == float(loss)


def test_dmd_generator_loss_is_the_score_gap_at_the_drawn_time():
  """generator_loss (DMD) against 0.5 mean(g^2), g = (x0_fake - x0_real) / mean |x - x0_real| by
  hand at x_t = (1 - t) x + t eps, x the rollout, t and eps the loss's own draws."""
  video, t_b, eps = _draws_and_rollout()
  loss, metrics = _jit(lambda gen, critic, rng: self_forcing.generator_loss(
      MODEL, gen, MODEL, TEACHER, MODEL, critic, BATCH, rng, OPTIONS))(GEN, CRITIC, LOSS_KEY)
  _, _, g = _hand_dmd(video, eps, t_b)
  np.testing.assert_allclose(loss, 0.5 * np.mean(np.square(g)), rtol=1e-4)
  np.testing.assert_allclose(metrics["dmd_gradient_norm"], np.mean(np.abs(g)), rtol=1e-4)
  np.testing.assert_allclose(metrics["score_time"], np.mean(t_b), rtol=1e-6)


def test_dmd_generator_gradient_in_the_video_is_fake_minus_real_over_its_norm(monkeypatch):
  """d generator_loss / d video against (x0_fake - x0_real) / mean |x - x0_real| / x.size by
  hand, with an identity generator (its parameters are the video) and the loss's own draws."""
  monkeypatch.setattr(self_forcing, "training_rollout",
                      lambda student, params, z, cond, rng, options: (params, jnp.int32(0)))
  _, _, t_b, eps = _loss_draws(LOSS_KEY)
  t_b, eps = np.asarray(t_b), np.asarray(eps)
  video = _normal(30)

  @_jit
  def grad(video, critic, rng):
    fn = lambda video: self_forcing.generator_loss(MODEL, video, MODEL, TEACHER, MODEL, critic,
                                                   BATCH, rng, OPTIONS)[0]
    return jax.value_and_grad(fn)(video)

  loss, to_video = grad(video, CRITIC, LOSS_KEY)
  real, fake, g = _hand_dmd(video, eps, t_b)
  np.testing.assert_allclose(to_video, g / video.size, rtol=1e-4, atol=1e-4 * np.abs(g).max()
                             / video.size)
  np.testing.assert_allclose(loss, 0.5 * np.mean(np.square(g)), rtol=1e-4)
  # Descent moves x towards the real score and away from the fake one.
  assert np.sum(to_video * (fake - real)) > 0


def test_options_are_checked():
  with pytest.raises(ValueError, match="loss='wgan' is unknown"):
    self_forcing.Options(num_frames=F, frame_shape=FRAME, chunk=C, loss="wgan")
  with pytest.raises(ValueError, match="num_frames=5 is not a multiple of chunk=2"):
    self_forcing.Options(num_frames=5, frame_shape=FRAME, chunk=C)
  with pytest.raises(ValueError, match="solver='heun' is unknown"):
    sampling.Sampler(MODEL, frame_shape=FRAME, chunk=C, window=F, solver="heun")
