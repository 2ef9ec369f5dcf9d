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
  step: jax.Array
  params: dict
  ema_params: dict
  opt_state: optax.OptState


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warmup, then cosine decay to 10 % over the run."""
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.optim.learning_rate,
      warmup_steps=config.optim.warmup_steps,
      decay_steps=max(config.train.num_steps, config.optim.warmup_steps + 1),
      end_value=0.1 * config.optim.learning_rate)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  return optax.chain(
      optax.clip_by_global_norm(config.optim.grad_clip),
      optax.adamw(learning_rate_schedule(config), b2=config.optim.b2,
                  weight_decay=config.optim.weight_decay))


def create(params, optimizer: optax.GradientTransformation) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree.map(jnp.copy, params), opt_state=optimizer.init(params))


def make_init(init_params: Callable[[jax.Array], Any], optimizer: optax.GradientTransformation,
              layout: sharding_lib.Layout) -> tuple[Callable[[jax.Array], TrainState], TrainState]:
  """A jitted `rng -> TrainState` that builds the state on the layout's mesh, each device computing
  only its own shards, and the state's shardings.

  `init_params(rng)` returns parameters that carry logical axis names (nn.LogicallyPartitioned, as
  Module.init returns them); the EMA copy and the optimizer moments, built from them by the same
  tree maps, carry them too. The shardings come from jax.eval_shape: nothing is computed.
  """
  boxed = jax.eval_shape(lambda: create(init_params(jax.random.key(0)), optimizer))
  sharding = layout.shardings(boxed)
  init = jax.jit(lambda rng: create(nn.meta.unbox(init_params(rng)), optimizer),
                 out_shardings=sharding)
  return init, sharding
