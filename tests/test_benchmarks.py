"""The benchmarks' train-step runner: built from a config alone, it steps like training."""

import numpy as np

from benchmarks import runners
from configs import atari_pong


def test_train_step_runner_needs_no_data_and_steps(tmp_path):
  config = atari_pong.get_config("test")
  config.data.path = str(tmp_path / "atari")  # must stay untouched: the step needs shapes only
  config.model.num_classes = 3  # Atari gives no labels; the runner makes them up
  runner = runners.TrainStepRunner(config)
  assert runner.batch["actions"].shape == (config.data.batch_size, config.data.num_frames)
  first, second = runner(), runner()
  assert np.isfinite(float(first["loss"])) and np.isfinite(float(second["loss"]))
  assert int(runner.state.step) == 2
  assert runner.xla_flops() > 0
  assert not (tmp_path / "atari").exists()
