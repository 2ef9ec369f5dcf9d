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
  ema_params = _ema(state.ema_params, params, ema_decay, state.step)
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


def _ema(ema_params, params, ema_decay: float, step):
  # Early in a run the average of few models is noise: ramp the decay up from 0.
  decay = jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step))
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)


def generator_critic_step(state: state_lib.TrainState, batch, rng, *, generator_loss: Callable,
                          critic_loss: Callable, generator_optimizer: optax.GradientTransformation,
                          critic_optimizer: optax.GradientTransformation, critic_updates: int,
                          schedule: optax.Schedule, ema_decay: float):
  """One iteration of a method that trains a generator against an online critic (Self Forcing):
  one generator update, then `critic_updates` critic updates, in one jitted step with no host
  round trip between them (Self Forcing's schedule: at loop step n the generator is updated when
  n % ratio == 0, the critic always; spec section 2.6).

  state.params holds {"generator", "critic", "teacher"} (the teacher frozen: no optimizer),
  state.opt_state {"generator", "critic"}, state.ema_params {"generator"}.
  `generator_loss(generator, critic, teacher, batch, rng) -> (loss, metrics)` is differentiated
  with respect to the generator only, `critic_loss(critic, generator, batch, rng) -> (loss,
  metrics)` with respect to the critic only; the critic's metrics are logged averaged over its
  updates, each named critic_NAME (a name that starts with critic_ as it is). Each update draws
  its own key from fold_in(rng, step), so a resumed run draws what an uninterrupted one would.
  """
  step_rng = jax.random.fold_in(rng, state.step)
  generator_rng, critic_rng = jax.random.split(step_rng)
  p, opt = state.params, state.opt_state
  frozen = jax.lax.stop_gradient(p["teacher"])
  (loss, metrics), grads = jax.value_and_grad(generator_loss, has_aux=True)(
      p["generator"], jax.lax.stop_gradient(p["critic"]), frozen, batch, generator_rng)
  updates, generator_opt = generator_optimizer.update(grads, opt["generator"], p["generator"])
  generator = optax.apply_updates(p["generator"], updates)

  def critic_update(carry, key):
    critic, critic_opt = carry
    (critic_value, critic_metrics), critic_grads = jax.value_and_grad(
        critic_loss, has_aux=True)(critic, jax.lax.stop_gradient(generator), batch, key)
    critic_step, critic_opt = critic_optimizer.update(critic_grads, critic_opt, critic)
    return ((optax.apply_updates(critic, critic_step), critic_opt),
            (critic_value, critic_metrics, optax.global_norm(critic_grads)))

  (critic, critic_opt), (critic_losses, critic_metrics, critic_norms) = jax.lax.scan(
      critic_update, (p["critic"], opt["critic"]), jax.random.split(critic_rng, critic_updates))
  ema = {"generator": _ema(state.ema_params["generator"], generator, ema_decay, state.step)}
  grad_norm = optax.global_norm(grads)
  finite = (jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(critic_losses).all()
            & _all_finite((generator, critic, ema)))
  # The critic's own metrics (the discriminator's logits and penalties, its exit step), averaged
  # over its updates, named critic_* apart from the generator's (both log a fake_logit).
  critic_means = {name if name.startswith("critic_") else f"critic_{name}": value.mean()
                  for name, value in critic_metrics.items()}
  metrics = {**metrics, **critic_means, "loss": loss, "grad_norm": grad_norm,
             "learning_rate": schedule(state.step), "critic_loss": critic_losses.mean(),
             "critic_grad_norm": critic_norms.mean(), "finite": finite}
  new_state = state.replace(
      step=state.step + 1, params=dict(p, generator=generator, critic=critic), ema_params=ema,
      opt_state={"generator": generator_opt, "critic": critic_opt})
  return new_state, metrics


def make_train_step(*, layout: sharding_lib.Layout, state_sharding: state_lib.TrainState,
                    step_fn: Callable = train_step, **kwargs):
  """`step_fn` (train_step, or generator_critic_step) with `kwargs` bound, jitted once over the
  layout's mesh; the state is donated so parameters and optimizer moments update in place. The
  state stays where `state_sharding` puts it, batches come as layout.batch, the key and the
  metrics are replicated, and the model's logical axis constraints bind to the mesh.
  """
  step = functools.partial(step_fn, **kwargs)

  def sharded_step(state, batch, rng):
    with layout.logical_axes():
      return step(state, batch, rng)

  return jax.jit(sharded_step, in_shardings=(state_sharding, layout.batch, layout.replicated),
                 out_shardings=(state_sharding, layout.replicated), donate_argnums=0)
