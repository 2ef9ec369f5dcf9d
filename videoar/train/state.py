"""The train state and the optimizer."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from videoar.train import sharding as sharding_lib


@flax.struct.dataclass
class TrainState:
  """What a train step carries (a pytree): the step [] int32, the parameters, the EMA copy of
  the trained ones and the optimizer state (create, create_generator_critic)."""

  step: jax.Array
  params: dict
  ema_params: dict
  opt_state: optax.OptState


def learning_rate_schedule(config: ml_collections.ConfigDict,
                           peak: float | None = None) -> optax.Schedule:
  """Linear warmup to `peak` (default optim.learning_rate), then cosine decay to 10 % of it over
  the run."""
  peak = config.optim.learning_rate if peak is None else peak
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=config.optim.warmup_steps,
      decay_steps=max(config.train.num_steps, config.optim.warmup_steps + 1),
      end_value=0.1 * peak)


def make_optimizer(config: ml_collections.ConfigDict,
                   peak: float | None = None) -> optax.GradientTransformation:
  """AdamW (config.optim) after global-norm clipping, on learning_rate_schedule(config, peak)."""
  return optax.chain(
      optax.clip_by_global_norm(config.optim.grad_clip),
      optax.adamw(learning_rate_schedule(config, peak), b1=config.optim.b1, b2=config.optim.b2,
                  weight_decay=config.optim.weight_decay))


def create(params, optimizer: optax.GradientTransformation) -> TrainState:
  """The state of one trained network, its EMA copy and its optimizer."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree.map(jnp.copy, params), opt_state=optimizer.init(params))


def create_generator_critic(params: dict, generator_optimizer: optax.GradientTransformation,
                            critic_optimizer: optax.GradientTransformation) -> TrainState:
  """The state of a generator trained against a critic (step.generator_critic_step): params
  {"generator", "critic", "teacher"}, an EMA of the generator, an optimizer for each of the
  two trained networks (the teacher is frozen)."""
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params,
      ema_params={"generator": jax.tree.map(jnp.copy, params["generator"])},
      opt_state={"generator": generator_optimizer.init(params["generator"]),
                 "critic": critic_optimizer.init(params["critic"])})


def make_init(init_params: Callable[[jax.Array], Any], create_state: Callable[[Any], TrainState],
              layout: sharding_lib.Layout) -> tuple[Callable[[jax.Array], TrainState], TrainState]:
  """A jitted `rng -> TrainState` that builds the state on the layout's mesh, each device computing
  only its own shards, and the state's shardings.

  `init_params(rng)` returns parameters that carry logical axis names (nn.LogicallyPartitioned, as
  Module.init returns them); `create_state(params)` builds the state around them (create, or
  create_generator_critic, with the optimizers bound), whose EMA copies and optimizer moments,
  built by tree maps, carry the names too. The shardings come from jax.eval_shape: nothing is
  computed.
  """
  boxed = jax.eval_shape(lambda: create_state(init_params(jax.random.key(0))))
  sharding = layout.shardings(boxed)
  init = jax.jit(lambda rng: create_state(nn.meta.unbox(init_params(rng))),
                 out_shardings=sharding)
  return init, sharding
