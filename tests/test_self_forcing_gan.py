"""Self Forcing's GAN variant (spec 4): the backbone's block tokens leave models without a head
as they were, the discriminator head, the logistic losses and their isolation, the
finite-difference R1/R2, validation, and a train step through the experiment."""

import functools
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videoar import experiment, validate
from videoar.attention import masks
from videoar.data import pipeline
from videoar.errors import ConfigError
from videoar.forcing import self_forcing
from videoar.models import discriminator, dit

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import bouncing_sf  # noqa: E402

B, F, C, K = 2, 6, 2, 4
FRAME = (8, 8, 3)
MODEL = dit.CausalDiT(patch=4, width=32, depth=2, num_heads=2, num_classes=3)
TAPS = (0, 1)
OPTIONS = self_forcing.Options(num_frames=F, frame_shape=FRAME, chunk=C, num_steps=K, loss="gan",
                               discriminator_taps=TAPS)
LABELS = np.array([0, 2])
COND = {"labels_b": LABELS}
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _random_like(tree, seed):
  """N(0, 0.2^2) values of the shapes of `tree` (the initialisation's zero output layers would
  make every output zero), drawn by numpy."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: (0.2 * rng.normal(size=a.shape)).astype(np.float32), tree)


def _backbone_shapes():
  init = functools.partial(MODEL.init, frame_pos_f=np.arange(F), mask=masks.Full(F),
                           labels_b=LABELS)
  return jax.eval_shape(init, jax.random.key(0),
                        jax.ShapeDtypeStruct((B, F) + FRAME, jnp.float32),
                        jax.ShapeDtypeStruct((B, F), jnp.float32))


def _head_params(seed):
  """The head as initialised (registers N(0, 0.02^2), default dense and norm initialisations)."""
  return nn.meta.unbox(discriminator.init_head(MODEL, len(TAPS), jax.random.key(seed)))


GEN, TEACHER = _random_like(_backbone_shapes(), 0), _random_like(_backbone_shapes(), 1)
CRITIC = {"backbone": _random_like(_backbone_shapes(), 2), "head": _head_params(3)}


def _normal(seed, shape=(B, F) + FRAME):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _max_abs(tree):
  return max(np.abs(g).max() for g in jax.tree.leaves(tree))


# --- the backbone's tokens ---------------------------------------------------------------------

def test_block_tokens_are_sown_only_when_asked_and_change_nothing():
  # Nothing of them at init: the parameters are those of a model without them.
  variables = MODEL.init(jax.random.key(0), _normal(0), np.zeros((B, F), np.float32),
                         frame_pos_f=np.arange(F), mask=masks.Full(F), labels_b=LABELS)
  assert set(variables) == {"params"}

  @_jit
  def outputs(params, x, t):
    kwargs = dict(frame_pos_f=jnp.arange(F), mask=masks.BlockCausal(F, C), labels_b=LABELS)
    plain = MODEL.apply(params, x, t, **kwargs)
    sown, state = MODEL.apply(params, x, t, mutable=[dit.BLOCK_TOKENS], **kwargs)
    return plain, sown, state

  t = np.random.default_rng(1).uniform(size=(B, F)).astype(np.float32)
  plain, sown, state = outputs(GEN, _normal(2), t)
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(sown)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert set(state) == {dit.BLOCK_TOKENS}
  blocks = state[dit.BLOCK_TOKENS]["blocks"]
  tokens = MODEL.tokens_per_frame(*FRAME[:2])
  assert [x.shape for x in blocks] == [(B, F, tokens, MODEL.width)] * MODEL.depth
  assert np.abs(np.asarray(blocks[1]) - np.asarray(blocks[0])).max() > 1e-3


# --- the head ----------------------------------------------------------------------------------

def test_head_parameters_have_logical_axis_names_and_registers_their_scale():
  config = bouncing_sf.get_config("gan,test")
  config.model.depth, config.forcing.discriminator_taps = 4, (1, 2, 3)
  exp = experiment.build_for_shapes(config, (32, 32, 3))
  boxed = jax.eval_shape(lambda: experiment.logical_critic_params(exp, jax.random.key(0)))
  assert set(boxed) == {"backbone", "head"}
  leaves = jax.tree.leaves(boxed["head"], is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves and all(isinstance(leaf, nn.LogicallyPartitioned) for leaf in leaves)
  for leaf in leaves:
    assert len(leaf.names) == leaf.value.ndim, leaf
  assert set(boxed["head"]["params"]) == {"registers", "tap_0", "tap_1", "tap_2", "norm",
                                          "hidden", "logit"}
  registers = nn.meta.unbox(experiment.logical_critic_params(exp, jax.random.key(0)))["head"][
      "params"]["registers"]
  assert registers.shape == (3, config.model.width)
  assert 0.015 < float(np.std(registers)) < 0.025


def test_every_tap_and_the_video_reach_the_logit():
  head = discriminator.head_for(MODEL, len(TAPS))
  tokens = [_normal(10 + j, (B, F, 4, MODEL.width)) for j in TAPS]
  logits, grads = _jit(jax.value_and_grad(lambda tokens: head.apply(CRITIC["head"], tokens)[0]))(
      tokens)
  assert all(np.abs(g).max() > 0 for g in grads)
  assert logits.shape == () and logits.dtype == jnp.float32
  with pytest.raises(ValueError, match="taps=\\(0, 2\\) must be blocks in \\[0, 2\\)"):
    discriminator.logits(MODEL, CRITIC, _normal(0), np.zeros((B, F), np.float32), taps=(0, 2),
                         frame_pos_f=np.arange(F), mask=masks.Full(F), labels_b=LABELS)


# --- the losses --------------------------------------------------------------------------------

def test_logistic_losses_are_the_formulas():
  real = np.array([2.0, -1.0, 0.5], np.float32)
  fake = np.array([-3.0, 0.0, 1.5], np.float32)
  softplus = lambda x: np.log1p(np.exp(x))
  np.testing.assert_allclose(self_forcing.gan_generator_loss(fake, 0.3),
                             0.3 * np.mean(softplus(-fake)), rtol=1e-6)
  np.testing.assert_allclose(self_forcing.gan_discriminator_loss(real, fake, 0.7),
                             0.7 * (np.mean(softplus(-real)) + np.mean(softplus(fake))),
                             rtol=1e-6)
  # At chance (all logits 0): log 2 and 2 log 2.
  zeros = np.zeros(4, np.float32)
  np.testing.assert_allclose(self_forcing.gan_generator_loss(zeros, 1.0), np.log(2), rtol=1e-6)
  np.testing.assert_allclose(self_forcing.gan_discriminator_loss(zeros, zeros, 1.0),
                             2 * np.log(2), rtol=1e-6)
  # Non-saturating: a confident discriminator (D(fake) very negative) still gives the generator
  # a gradient of about -w / n per logit.
  grad = jax.grad(self_forcing.gan_generator_loss)(np.array([-20.0, -20.0], np.float32), 1.0)
  np.testing.assert_allclose(grad, [-0.5, -0.5], rtol=1e-6)


def _smooth_d(x):
  """A smooth toy discriminator of a batch of vectors [N, 16] -> [N]."""
  a = np.random.default_rng(7).normal(size=(16, 8)).astype(np.float32) / 4
  return jnp.sum(jnp.tanh(x @ a), axis=-1) + 0.1 * jnp.sum(jnp.square(x), axis=-1)


def test_finite_difference_penalty_is_the_squared_input_gradient_norm():
  x = _normal(20, (1, 16))
  n = 20_000
  zeta = _normal(21, (n, 16))
  expected = float(np.sum(np.square(jax.grad(lambda x: _smooth_d(x).sum())(x))))
  d = _smooth_d(np.repeat(x, n, axis=0))
  penalty = self_forcing.finite_difference_penalty(d, _smooth_d(x + 0.01 * zeta))
  # Monte Carlo over zeta: relative standard deviation sqrt(2 / n) = 1 %.
  np.testing.assert_allclose(penalty, expected, rtol=0.04)


def test_finite_difference_penalty_on_the_discriminator():
  n = 1024
  x = _normal(30, (1, F) + FRAME)
  t_b = np.array([0.6], np.float32)

  @_jit
  def both(x, zeta):
    d = lambda x, t_b, cond: self_forcing.discriminate(MODEL, CRITIC, x, t_b, cond, TAPS)
    grad = jax.grad(lambda x: d(x, t_b, {"labels_b": LABELS[:1]}).sum())(x)
    many = {"labels_b": np.repeat(LABELS[:1], n)}
    t_many = jnp.repeat(t_b, n)
    penalty = self_forcing.finite_difference_penalty(
        d(jnp.repeat(x, n, axis=0), t_many, many), d(x + 0.01 * zeta, t_many, many))
    return jnp.sum(jnp.square(grad)), penalty

  expected, penalty = both(x, _normal(31, (n, F) + FRAME))
  # Monte Carlo: relative standard deviation sqrt(2 / n) = 4.4 %; the O(sigma) bias is smaller.
  np.testing.assert_allclose(penalty, expected, rtol=0.2)
  assert float(expected) > 0


def _batch(video=None):
  return {"video": _normal(40) if video is None else video, "label": LABELS}


@functools.cache
def _loss_grads(which: str, r1: float, r2: float):
  options = self_forcing.Options(num_frames=F, frame_shape=FRAME, chunk=C, num_steps=K,
                                 loss="gan", discriminator_taps=TAPS, r1_weight=r1, r2_weight=r2)

  @_jit
  def grads(gen, critic, batch, rng):
    if which == "generator":
      fn = lambda gen, critic: self_forcing.generator_loss(
          MODEL, gen, MODEL, TEACHER, MODEL, critic, batch, rng, options)
    else:
      fn = lambda gen, critic: self_forcing.critic_loss(MODEL, gen, MODEL, critic, batch, rng,
                                                        options)
    return jax.value_and_grad(fn, argnums=(0, 1), has_aux=True)(gen, critic)

  return grads


def test_gan_generator_loss_trains_the_generator_only():
  (value, metrics), (to_gen, to_critic) = _loss_grads("generator", 0.0, 0.0)(
      GEN, CRITIC, _batch(), jax.random.key(0))
  assert np.isfinite(value) and 0 <= int(metrics["exit_step"]) < K
  assert 0.02 <= float(metrics["score_time"]) <= 0.98
  np.testing.assert_allclose(value, metrics["loss"])
  assert _max_abs(to_gen) > 0.0
  assert _max_abs(to_critic) == 0.0


@pytest.mark.parametrize("r1,r2", [(0.0, 0.0), (0.5, 2.0)])
def test_discriminator_loss_trains_backbone_and_head_only(r1, r2):
  (value, metrics), (to_gen, to_critic) = _loss_grads("critic", r1, r2)(
      GEN, CRITIC, _batch(), jax.random.key(0))
  assert np.isfinite(value) and value == metrics["critic_loss"]
  assert _max_abs(to_gen) == 0.0
  assert _max_abs(to_critic["backbone"]) > 0.0
  assert _max_abs(to_critic["head"]) > 0.0
  # Every block up to the last tap and every part of the head gets gradient.
  for i in range(max(TAPS) + 1):
    assert _max_abs(to_critic["backbone"]["params"][f"block_{i}"]) > 0.0
  for name, tree in to_critic["head"]["params"].items():
    assert _max_abs(tree) > 0.0, name
  if r1 or r2:
    assert float(metrics["r1"]) > 0 and float(metrics["r2"]) > 0
    # The penalties only add their inputs to the one batched call: the same logistic loss.
    (plain, _), _ = _loss_grads("critic", 0.0, 0.0)(GEN, CRITIC, _batch(), jax.random.key(0))
    np.testing.assert_allclose(value - 0.5 * (metrics["r1"] + metrics["r2"]), plain, rtol=1e-5)
  else:
    assert float(metrics["r1"]) == float(metrics["r2"]) == 0.0


def test_real_and_fake_share_the_time_and_the_noise():
  """With the batch's clips equal to the rollout the discriminator_loss draws, real and fake
  are the same noised video: the same t and the same eps."""
  rng = jax.random.key(5)

  @_jit
  def fake_video(gen):
    main_rng, _ = jax.random.split(rng)
    z, rollout_rng, _, _ = self_forcing._noise_and_times(main_rng, B, OPTIONS)
    video, _ = self_forcing.training_rollout(MODEL, gen, z, COND, rollout_rng, OPTIONS)
    return video

  (_, metrics), _ = _loss_grads("critic", 0.0, 0.0)(GEN, CRITIC, _batch(fake_video(GEN)), rng)
  np.testing.assert_allclose(metrics["real_logit"], metrics["fake_logit"], rtol=1e-5, atol=1e-6)
  (_, other), _ = _loss_grads("critic", 0.0, 0.0)(GEN, CRITIC, _batch(), rng)
  assert abs(float(other["real_logit"]) - float(other["fake_logit"])) > 1e-4


# --- config and the train step -----------------------------------------------------------------

@pytest.mark.parametrize("variant,key,value,message", [
    ("test", "r1_weight", 1.0, "only forcing.loss='gan' reads it (loss='dmd')"),
    ("gan,test", "discriminator_taps", (0, 1), "must be increasing block indices in [0,"
     " model.depth=1)"),
    ("gan,test", "gan_weights", (1.0, 0.0), "must be (w_G, w_D), both > 0"),
    ("gan,test", "r2_weight", -1.0, "must be >= 0 (0 turns it off)"),
    # Was scored unguided without a word: the teacher has no unconditional score to guide from.
    ("test", "real_guidance", 7.0, "guides nothing: the teacher is conditioned on nothing"
     " (model.num_classes, num_actions and text_dim are 0)"),
])
def test_gan_keys_are_validated_in_one_line(variant, key, value, message):
  config = bouncing_sf.get_config(variant)
  config.forcing[key] = value
  with pytest.raises(ConfigError) as error:
    validate.validate(config)
  assert str(error.value) == f"config.forcing.{key}={value!r} is invalid: {message}"


def test_options_check_the_gan_settings():
  with pytest.raises(ValueError, match="discriminator_taps=\\(1, 0\\) must be increasing"):
    self_forcing.Options(num_frames=F, frame_shape=FRAME, chunk=C, discriminator_taps=(1, 0))
  with pytest.raises(ValueError, match="gan_weights=\\(1.0,\\) must be"):
    self_forcing.Options(num_frames=F, frame_shape=FRAME, chunk=C, gan_weights=(1.0,))


def test_a_gan_train_step_runs_through_the_experiment(trained_stage):
  config = bouncing_sf.get_config("gan,test")
  # Only the stages' kinds are checked: the step starts from init, not from their weights.
  config.forcing.teacher_workdir = trained_stage("teacher", bouncing_sf.get_config("teacher,test"))
  config.forcing.generator_workdir = trained_stage("ode", bouncing_sf.get_config("ode,test"))
  config.forcing.r1_weight = config.forcing.r2_weight = 0.1
  config.optim.warmup_steps = 0  # a first step with learning rate 0 would move nothing
  exp = experiment.build(config)
  train_step = experiment.make_train_step(exp)
  init_rng, rng = jax.random.split(jax.random.key(0))
  state = train_step.init(init_rng)
  assert set(state.params["critic"]) == {"backbone", "head"}
  assert set(state.opt_state["critic"][1][0].mu) == {"backbone", "head"}
  # Random weights for the three networks: the zero-initialised output layers would make every
  # video the same.
  state = state.replace(params=_random_like(jax.device_get(state.params), 50))
  before = jax.device_get(state.params)
  batch = experiment.model_inputs(pipeline.train_batches(
      exp.source, batch_size=config.data.batch_size, num_frames=config.data.num_frames,
      seed=0)[0])
  state, metrics = train_step.step(state, batch, rng)
  metrics, after = jax.device_get((metrics, state.params))
  assert bool(metrics["finite"]) and np.isfinite(metrics["loss"])
  assert np.isfinite(metrics["critic_loss"]) and metrics["grad_norm"] > 0
  assert "fake_logit" in metrics and "dmd_gradient_norm" not in metrics
  # The discriminator's own metrics reach the log too (they were computed and dropped), named
  # apart from the generator's fake_logit.
  assert {"critic_real_logit", "critic_fake_logit", "critic_exit_step"} <= set(metrics)
  assert metrics["critic_fake_logit"] != metrics["fake_logit"]
  assert metrics["critic_r1"] > 0 and metrics["critic_r2"] > 0
  moved = lambda a, b: any(not np.array_equal(x, y)
                           for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  assert moved(before["generator"], after["generator"])
  assert moved(before["critic"]["backbone"], after["critic"]["backbone"])
  assert moved(before["critic"]["head"], after["critic"]["head"])
  assert not moved(before["teacher"], after["teacher"])
