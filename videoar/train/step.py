"""The train step: a pure function (state, batch, rng) -> (state, metrics)."""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from videoar.train import sharding as sharding_lib
from videoar.train import state as state_lib


def train_step(state: state_lib.TrainState, batch, rng, *, loss_fn: Callable,
               optimizer: optax.GradientTransformation, schedule: optax.Schedule,
               ema_decay: float):
  """`loss_fn(params, batch, rng, step) -> (loss, metrics)`; the step's randomness is
  `fold_in(rng, step)`, so a resumed run draws exactly what an uninterrupted one would.

  metrics["finite"] is whether the loss, the gradient norm and every updated parameter and EMA
  parameter are finite (one elementwise pass, as cheap as the EMA update): a finite loss can still
  come with an update that is not (gradients that overflow, a 0/0 in the optimizer), and the
  trainer saves no state that is not finite.
  """
  step_rng = jax.random.fold_in(rng, state.step)
  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params, batch, step_rng, state.step)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  # Early in a run the average of few models is noise: ramp the decay up from 0.
  decay = jnp.minimum(ema_decay, (1.0 + state.step) / (10.0 + state.step))
  ema_params = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
  grad_norm = optax.global_norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & _all_finite((params, ema_params))
  metrics = dict(metrics, loss=loss, grad_norm=grad_norm, learning_rate=schedule(state.step),
                 finite=finite)
  new_state = state.replace(step=state.step + 1, params=params, ema_params=ema_params,
                            opt_state=opt_state)
  return new_state, metrics


def _all_finite(tree) -> jax.Array:
  """Whether every element of every leaf is finite (a norm would overflow on large values)."""
  return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]))


def make_train_step(*, layout: sharding_lib.Layout | None = None,
                    state_sharding: state_lib.TrainState | None = None, **kwargs):
  """Jitted once; the state is donated so parameters and optimizer moments update in place.

  With a `layout`, the step runs over its mesh: the state stays where `state_sharding` puts it,
  batches come as layout.batch, the key and the metrics are replicated, and the model's logical
  axis constraints bind to the mesh. Without one, it runs where its arguments are.
  """
  step = functools.partial(train_step, **kwargs)
  if layout is None:
    return jax.jit(step, donate_argnums=0)

  def sharded_step(state, batch, rng):
    with layout.logical_axes():
      return step(state, batch, rng)

  return jax.jit(sharded_step, in_shardings=(state_sharding, layout.batch, layout.replicated),
                 out_shardings=(state_sharding, layout.replicated), donate_argnums=0)
