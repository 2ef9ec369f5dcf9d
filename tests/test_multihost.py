"""Two CPU processes joined by jax.distributed (launch/local_multiprocess.sh) train as one does."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
ARGS = ["--config=configs/bouncing_tiny.py:test", "--config.train.num_steps=3",
        "--config.train.log_every=1", "--config.train.checkpoint_every=3"]
# Two processes split each batch between two devices, so the loss is a mean of two partial sums
# and the gradients are all-reduced: float32 sums in another order. Measured: equal to ~1e-7.
RTOL = 1e-5


def metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: r for r in map(json.loads, f)}


def test_two_processes_train_like_one(tmp_path):
  single = subprocess.run(
      [sys.executable, "-m", "videoar.main", f"--workdir={tmp_path / 'single'}", "--mode=train",
       *ARGS], capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert single.returncode == 0, single.stderr[-2000:]
  multi = subprocess.run(
      ["bash", "launch/local_multiprocess.sh", f"--workdir={tmp_path / 'multi'}", *ARGS],
      capture_output=True, text=True, timeout=300, cwd=ROOT,
      env=dict(os.environ, NUM_PROCESSES="2", PYTHON=sys.executable))
  assert multi.returncode == 0, multi.stderr[-3000:]
  assert "'data': 2" in multi.stdout  # one mesh over both processes' devices

  expected, got = metrics(tmp_path / "single"), metrics(tmp_path / "multi")
  assert sorted(got) == [1, 2, 3]
  for step in expected:
    for key in ("loss", "grad_norm"):
      np.testing.assert_allclose(got[step][key], expected[step][key], rtol=RTOL,
                                 err_msg=f"{key} at step {step}")
  assert os.listdir(tmp_path / "multi" / "checkpoints") == ["3"]


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_one_saved_step(tmp_path):
  process = subprocess.Popen(
      ["bash", "launch/local_multiprocess.sh", f"--workdir={tmp_path}",
       "--config=configs/bouncing_tiny.py:test", "--config.train.num_steps=100000",
       "--config.train.log_every=1", "--config.train.checkpoint_every=100000"],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
      env=dict(os.environ, NUM_PROCESSES="2", PYTHON=sys.executable))
  deadline = time.monotonic() + 240
  while not (os.path.exists(tmp_path / "metrics.jsonl") and metrics(tmp_path)):
    assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1]
    time.sleep(0.1)
  # The process with index 1: JAX's preemption service tells the other, and they agree a step.
  (worker,) = [pid for pid in map(int, subprocess.check_output(
      ["pgrep", "-P", str(process.pid)], text=True).split())
               if "JAX_PROCESS_ID=1\0" in open(f"/proc/{pid}/environ").read()]
  os.kill(worker, signal.SIGTERM)
  stdout, stderr = process.communicate(timeout=120)
  assert process.returncode == 0, stderr[-3000:]
  (saved,) = os.listdir(tmp_path / "checkpoints")
  assert stdout.count(f"preempted: saved step {saved}") == 1
