"""The train step the benchmarks time: the project's jitted, donated step on a fixed batch."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from videoar.train import loop
from videoar.train import state as state_lib
from videoar.train import step as step_lib


class TrainStepRunner:
  """Each call runs one train step of `config` and keeps the new state, as training does.

  The step's cost depends on shapes only, so no data source is read: the batch is random, of
  the config's shape (data.options.size square RGB frames), with random labels, actions or text
  where the model is conditioned on them.
  """

  def __init__(self, config: ml_collections.ConfigDict):
    size = config.data.options.size
    self.exp = loop.build_for_shapes(config, (size, size, 3))
    optimizer = state_lib.make_optimizer(config)
    self.state = jax.jit(lambda rng: state_lib.create(loop.init_params(self.exp, rng),
                                                      optimizer))(jax.random.key(0))
    self.step = step_lib.make_train_step(
        loss_fn=loop.make_loss_fn(self.exp), optimizer=optimizer,
        schedule=state_lib.learning_rate_schedule(config), ema_decay=config.optim.ema_decay)
    rng = np.random.default_rng(0)
    b, f, m = config.data.batch_size, config.data.num_frames, config.model
    self.batch = {"video": rng.uniform(-1, 1, (b, f, size, size, 3)).astype(np.float32)}
    if m.num_classes:
      self.batch["label"] = rng.integers(0, m.num_classes, (b,)).astype(np.int32)
    if m.num_actions:
      self.batch["actions"] = rng.integers(0, m.num_actions, (b, f)).astype(np.int32)
    if m.text_dim:
      self.batch["text"] = rng.normal(size=(b, 8, m.text_dim)).astype(np.float32)
    self.rng = jax.random.key(1)

  def __call__(self) -> dict:
    self.state, metrics = self.step(self.state, self.batch, self.rng)
    return metrics

  def xla_flops(self) -> float:
    """XLA's FLOP count of the compiled step."""
    cost = self.step.lower(self.state, self.batch, self.rng).compile().cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost).get("flops", 0.0)
