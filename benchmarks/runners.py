"""The train step the benchmarks time: the project's jitted, donated step on a fixed batch."""

from __future__ import annotations

import jax
import ml_collections

from videoar import experiment


class TrainStepRunner:
  """Each call runs one train step of `config` and keeps the new state, as training does.

  The step's cost depends on shapes only, so no data source is read: the batch is random, of
  the config's shape (data.options.size square RGB frames), with random labels, actions or text
  where the model is conditioned on them (experiment.random_batch).
  """

  def __init__(self, config: ml_collections.ConfigDict):
    size = config.data.options.size
    self.exp = experiment.build_for_shapes(config, (size, size, 3))
    self.train_step = experiment.make_train_step(self.exp)
    self.state = self.train_step.init(jax.random.key(0))
    self.batch = experiment.random_batch(self.exp)
    self.rng = jax.random.key(1)

  def __call__(self) -> dict:
    self.state, metrics = self.train_step.step(self.state, self.batch, self.rng)
    return metrics

  def xla_flops(self) -> float:
    """XLA's FLOP count of the compiled step."""
    cost = self.train_step.step.lower(self.state, self.batch, self.rng).compile().cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost).get("flops", 0.0)
