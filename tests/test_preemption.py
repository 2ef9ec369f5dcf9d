"""Surviving preemption: SIGKILL and resume, SIGTERM, damaged checkpoints, non-finite losses."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import pytest

from videoar.train import checkpoint as checkpoint_lib
from videoar.train import loop
from videoar.train import sharding as sharding_lib
from videoar.train import state as state_lib

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import bouncing_tiny  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..")
NUM_STEPS = 10
ARGS = ["--config=configs/bouncing_tiny.py:test", "--mode=train", "--config.train.log_every=1",
        f"--config.train.num_steps={NUM_STEPS}", "--config.train.checkpoint_every=3"]


def train_command(workdir, *args):
  return [sys.executable, "-m", "videoar.main", f"--workdir={workdir}", *ARGS, *args]


def logged(workdir) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.endswith("\n")]


def wait_for_step(process, workdir, step):
  """Returns once `workdir` has logged `step`; fails if the process ends first."""
  deadline = time.monotonic() + 240
  while not any(r["step"] >= step for r in logged(workdir)):
    assert process.poll() is None, process.communicate()[1][-2000:]
    assert time.monotonic() < deadline
    time.sleep(0.02)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  """An uninterrupted run: its workdir."""
  workdir = tmp_path_factory.mktemp("straight")
  result = subprocess.run(train_command(workdir), capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
  assert result.returncode == 0, result.stderr[-2000:]
  return workdir


def test_run_killed_at_a_random_step_resumes_bit_identically(straight_run, tmp_path):
  seed = random.randrange(2**32)
  kill_after = random.Random(seed).randint(1, NUM_STEPS - 2)
  process = subprocess.Popen(train_command(tmp_path), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, cwd=ROOT)
  wait_for_step(process, tmp_path, kill_after)
  process.send_signal(signal.SIGKILL)
  process.communicate()
  killed_at = max(r["step"] for r in logged(tmp_path))
  assert killed_at < NUM_STEPS, f"the run finished before SIGKILL (seed {seed})"

  resumed = subprocess.run(train_command(tmp_path), capture_output=True, text=True, timeout=300,
                           cwd=ROOT)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  losses = [(r["step"], r["loss"]) for r in logged(tmp_path)]
  expected = [(r["step"], r["loss"]) for r in logged(straight_run)]
  assert losses == expected, f"killed after step {killed_at} (seed {seed})"


def test_sigterm_saves_a_checkpoint_and_exits_0(tmp_path):
  process = subprocess.Popen(
      train_command(tmp_path, "--config.train.num_steps=100000",
                    "--config.train.checkpoint_every=100000"),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
  wait_for_step(process, tmp_path, 2)
  process.send_signal(signal.SIGTERM)
  stdout, stderr = process.communicate(timeout=120)
  assert process.returncode == 0, stderr[-2000:]
  (saved,) = os.listdir(tmp_path / "checkpoints")
  assert 2 <= int(saved) < 100000
  assert f"preempted: saved step {saved}" in stdout


def _resume_from(workdir):
  config = bouncing_tiny.get_config("test")
  exp = loop.build(config)
  layout = sharding_lib.Layout.from_config(config.mesh)
  init, _ = state_lib.make_init(lambda rng: loop.logical_params(exp, rng),
                                state_lib.make_optimizer(config), layout)
  rng = jax.device_put(jax.random.key(0), layout.replicated)
  checkpointer = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=2)
  try:
    return checkpointer.restore_latest_run(jax.eval_shape(init, rng), rng)
  finally:
    checkpointer.close()


@pytest.mark.parametrize("damage", ["truncate_array_data", "delete_item_metadata"])
def test_damaged_newest_checkpoint_is_skipped(straight_run, tmp_path, damage):
  workdir = tmp_path / "run"
  subprocess.run(["cp", "-r", str(straight_run), str(workdir)], check=True)
  newest = workdir / "checkpoints" / str(NUM_STEPS)
  state_dir = newest / "state"
  if damage == "truncate_array_data":
    data_files = [os.path.join(d, f) for d, _, files in os.walk(state_dir) for f in files
                  if os.sep + "d" + os.sep in os.path.join(d, f)]
    assert data_files
    for path in data_files:
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
  else:
    os.remove(state_dir / "_METADATA")

  resumed = _resume_from(workdir)
  assert int(resumed.state.step) == resumed.data["step"] == 9  # the checkpoint before
  # Gone, so that the resumed run can save that step again.
  assert sorted(os.listdir(workdir / "checkpoints")) == ["9"]


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
  config = bouncing_tiny.get_config("test")
  # A huge step sends the parameters to ~1e30 after step 1: the loss of step 2 is not finite.
  config.optim.learning_rate, config.optim.warmup_steps = 1e30, 0
  config.train.log_every, config.train.checkpoint_every = 1, 1
  with pytest.raises(FloatingPointError, match="at step 2; the last good checkpoint is kept"):
    loop.train(config, str(tmp_path))
  assert os.listdir(tmp_path / "checkpoints") == ["1"]
