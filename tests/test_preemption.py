"""Surviving preemption: SIGKILL and resume, SIGTERM, damaged checkpoints, non-finite losses."""

import dataclasses
import errno
import gc
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import pytest

from videoar import errors, experiment, trainer
from videoar.train import checkpoint as checkpoint_lib
from videoar.train import metrics_log
from videoar.train import preemption

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


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGINT])
def test_run_stopped_at_a_random_step_resumes_bit_identically(straight_run, tmp_path, signum):
  """SIGKILL loses the steps since the last checkpoint; SIGINT (Ctrl-C) saves the step it was
  on. Either way the same command resumes and logs exactly the losses of a straight run."""
  seed = random.randrange(2**32)
  # The tiny steps take milliseconds: on a loaded machine the run can finish between seeing the
  # step and the signal landing. That tests nothing, so it is tried again from a clean workdir.
  for attempt in range(5):
    if attempt:
      shutil.rmtree(tmp_path)
      tmp_path.mkdir()
    kill_after = random.Random(seed + attempt).randint(1, NUM_STEPS - 2)
    process = subprocess.Popen(train_command(tmp_path), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, cwd=ROOT)
    wait_for_step(process, tmp_path, kill_after)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    killed_at = max(r["step"] for r in logged(tmp_path))
    if killed_at < NUM_STEPS:
      break
  assert killed_at < NUM_STEPS, f"the run finished before the signal 5 times (seed {seed})"
  if signum == signal.SIGINT:
    assert process.returncode == 128 + signal.SIGINT, stderr[-2000:]
    saved = max(int(step) for step in os.listdir(tmp_path / "checkpoints"))
    assert stderr.strip().splitlines()[-1] == (
        f"interrupted by SIGINT: saved step {saved}; the same command resumes from it")
    assert saved >= kill_after

  resumed = subprocess.run(train_command(tmp_path), capture_output=True, text=True, timeout=300,
                           cwd=ROOT)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  losses = [(r["step"], r["loss"]) for r in logged(tmp_path)]
  expected = [(r["step"], r["loss"]) for r in logged(straight_run)]
  assert losses == expected, f"stopped after step {killed_at} (seed {seed})"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_checkpoint_and_says_so_in_one_line(tmp_path, signum):
  """SIGTERM is a planned stop (exit 0, every process alike); Ctrl-C exits 130."""
  process = subprocess.Popen(
      train_command(tmp_path, "--config.train.num_steps=100000",
                    "--config.train.checkpoint_every=100000"),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
  wait_for_step(process, tmp_path, 2)
  process.send_signal(signum)
  stdout, stderr = process.communicate(timeout=120)
  (saved,) = os.listdir(tmp_path / "checkpoints")
  assert 2 <= int(saved) < 100000
  if signum == signal.SIGTERM:
    assert process.returncode == 0, stderr[-2000:]
    assert stdout.strip().splitlines()[-1] == (
        f"preempted: saved step {saved}; the same command resumes from it")
  else:
    assert process.returncode == 130, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == (
        f"interrupted by SIGINT: saved step {saved}; the same command resumes from it")
  assert "Traceback" not in stderr


def test_a_first_ctrl_c_asks_to_stop_and_a_second_stops_at_once():
  """In the process (two signals sent at once to a child may arrive as one)."""
  previous = signal.getsignal(signal.SIGINT)
  stop = preemption.Preemption()
  try:
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.reached(1) and stop.signal == signal.SIGINT
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(5)
  finally:
    stop.restore()
  assert signal.getsignal(signal.SIGINT) is previous


def _resume_from(workdir):
  config = bouncing_tiny.get_config("test")
  train_step = experiment.make_train_step(experiment.build(config))
  rng = jax.device_put(jax.random.key(0), train_step.layout.replicated)
  checkpointer = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=2)
  try:
    return checkpointer.restore_latest_run(train_step.abstract_state(), rng)
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
  # Moved aside, not deleted: the resumed run can save that step again.
  assert sorted(os.listdir(workdir / "checkpoints")) == ["9"]
  (moved,) = os.listdir(workdir / "checkpoints.damaged")
  assert moved.startswith(f"{NUM_STEPS}-")


def _restored_steps_and_finite(workdir):
  """(the checkpoints in workdir, whether the newest restores to finite parameters)."""
  steps = sorted(int(step) for step in os.listdir(workdir / "checkpoints"))
  if not steps:
    return steps, None
  resumed = _resume_from(workdir)
  finite = all(bool(jax.numpy.isfinite(x).all()) for x in jax.tree.leaves(resumed.state))
  return steps, finite


@jax.custom_jvp
def _infinite_gradient(x):
  return x


@_infinite_gradient.defjvp
def _infinite_gradient_jvp(primals, tangents):
  return primals[0], tangents[0] * jax.numpy.inf


@pytest.mark.parametrize("fault,bad_step,kept", [
    # A huge step sends the parameters to ~1e30 after step 1: the loss of step 2 is not finite.
    ("huge_learning_rate", 2, [1]),
    # A finite loss whose gradient is not: only the update shows it.
    ("infinite_gradient", 1, []),
])
def test_a_step_that_is_not_finite_stops_naming_it_and_saves_nothing_of_it(
    tmp_path, monkeypatch, fault, bad_step, kept):
  config = bouncing_tiny.get_config("test")
  config.optim.warmup_steps = 0
  config.train.log_every, config.train.checkpoint_every = 1, 1
  if fault == "huge_learning_rate":
    config.optim.learning_rate = 1e30
  else:
    make_loss_fn = experiment.make_loss_fn

    def poisoned(exp):
      loss_fn = make_loss_fn(exp)
      return lambda *args: (lambda loss, metrics: (_infinite_gradient(loss), metrics))(
          *loss_fn(*args))

    monkeypatch.setattr(experiment, "make_loss_fn", poisoned)
  with pytest.raises(FloatingPointError) as error:
    trainer.train(experiment.build(config), str(tmp_path))
  newest = f"step {kept[-1]}" if kept else "none yet"
  assert str(error.value).startswith(f"step {bad_step} is not finite")
  assert str(error.value).endswith(f"the newest checkpoint, {newest}, is the last good one")
  steps, finite = _restored_steps_and_finite(tmp_path)
  assert steps == kept
  assert finite in (None, True)


@dataclasses.dataclass(frozen=True)
class _FailingSource:
  """The bouncing world until clip `fail_from`, then an unreadable file."""

  source: object
  fail_from: int

  def clip(self, seed, index, num_frames):
    if index >= self.fail_from:
      raise OSError(errno.EIO, "Input/output error", "/data/clip.npy")
    return self.source.clip(seed, index, num_frames)


def test_a_data_pipeline_that_fails_keeps_the_last_step_and_says_why(tmp_path):
  config = bouncing_tiny.get_config("test")
  config.train.num_steps, config.train.checkpoint_every, config.train.log_every = 6, 100, 1
  exp = experiment.build(config)
  # Batches of 4 clips: step 4 reads clips 12..15.
  exp = dataclasses.replace(exp, source=_FailingSource(exp.source, 12))
  with pytest.raises(trainer.RunFailed) as error:
    trainer.train(exp, str(tmp_path))
  message = str(error.value)
  assert message.startswith("the data pipeline failed before step 4 (") and "\n" not in message
  assert message.endswith("); saved step 3; the same command resumes from it")
  assert _restored_steps_and_finite(tmp_path) == ([3], True)


def test_a_failed_save_names_the_newest_checkpoint_on_disk_and_a_log_that_fails_too_stays_quiet(
    tmp_path, monkeypatch):
  # The step-2 save is dispatched but never written (an asynchronous write still in flight when
  # the disk filled); the step-4 save fails. The line named step 2, which is not on disk, and the
  # logs' own failure to flush on the full disk replaced it with a traceback.
  config = bouncing_tiny.get_config("test")
  config.train.num_steps, config.train.checkpoint_every = 6, 2
  calls = []

  def dispatched_then_no_space(self, state, **kwargs):
    calls.append(int(state.step))
    if len(calls) > 1:
      raise OSError(errno.ENOSPC, "No space left on device")

  def flush_fails(self):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(checkpoint_lib.Checkpointer, "save", dispatched_then_no_space)
  monkeypatch.setattr(metrics_log.MetricsLog, "close", flush_fails)
  with pytest.raises(trainer.RunFailed) as error:
    trainer.train(experiment.build(config), str(tmp_path))
  assert calls == [2, 4]
  assert str(error.value) == (
      f"saving step 4 to {tmp_path}/checkpoints failed (OSError: [Errno 28] No space left on"
      " device); the newest checkpoint is none")


def test_a_save_that_fails_says_so_in_one_line(tmp_path, monkeypatch):
  config = bouncing_tiny.get_config("test")

  def no_space(self, state, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(checkpoint_lib.Checkpointer, "save", no_space)
  with pytest.raises(trainer.RunFailed) as error:
    trainer.train(experiment.build(config), str(tmp_path))
  assert str(error.value) == (
      f"saving step 2 to {tmp_path}/checkpoints failed (OSError: [Errno 28] No space left on"
      " device); the newest checkpoint is none")


def test_a_signal_in_a_garbage_collection_callback_is_sent_again_not_lost(monkeypatch):
  # Raised there, the KeyboardInterrupt was printed as "Exception ignored in: <function
  # _xla_gc_callback>" and dropped: a Ctrl-C while sampling wrote the samples and exited 0.
  sent, seen = [], []
  monkeypatch.setattr(os, "kill", lambda pid, signum: sent.append((pid, signum)))

  def callback(phase, info):
    try:
      errors.interrupt(signal.SIGINT, sys._getframe())
      seen.append("sent again")
    except KeyboardInterrupt:
      seen.append("raised")

  gc.callbacks.append(callback)
  try:
    gc.collect()
  finally:
    gc.callbacks.remove(callback)
  deadline = time.monotonic() + 5
  while len(sent) < len(seen) and time.monotonic() < deadline:
    time.sleep(0.01)
  assert seen == ["sent again", "sent again"]  # gc calls back at its start and at its end
  assert sent == [(os.getpid(), signal.SIGINT)] * 2
  # Anywhere else it is Python's own KeyboardInterrupt, raised at once.
  with pytest.raises(KeyboardInterrupt):
    errors.interrupt(signal.SIGINT, sys._getframe())
  with pytest.raises(errors.Stopped):
    errors.raise_from_signal(signal.SIGTERM, sys._getframe(), errors.Stopped(signal.SIGTERM))
