"""The benchmarks' runners: built from a config alone, they step and stream like training."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import runners
from configs import atari_pong, bouncing_rf

ROOT = os.path.join(os.path.dirname(__file__), "..")


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


def test_sampler_benchmark_streams_the_configs_sampler(tmp_path):
  """The GPU benchmark's code path (configs/wan_1p3b.py: latents, text, scanned blocks, sink)
  at the tiny shape: each impl streams, timings per chunk, the profile's figures. cudnn, which
  needs a GPU, fails on the CPU without taking the impls after it: exit 1, its error recorded."""
  out = tmp_path / "sampler.json"
  proc = subprocess.run(
      [sys.executable, "benchmarks/sampler.py", "--config=configs/wan_1p3b.py:sampler,tiny",
       "--frame_shape=8,8,4", "--chunks=3", "--impls=auto,cudnn,dense", "--text_tokens=4",
       "--video_frames_per_frame=4", f"--json={out}"],
      cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True)
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert "--impls: cudnn failed: ValueError: attention impl='cudnn' needs a GPU" in proc.stdout
  assert "Traceback" not in proc.stderr  # the dispatcher's refusal is its one line
  result = json.loads(out.read_text())
  assert [row["impl"] for row in result["impls"]] == ["auto", "dense"]
  assert list(result["failed"]) == ["cudnn"]
  assert result["matmul_tflops"] > 0
  for row in result["impls"]:
    # Window 9 frames in chunks of 3: a cache of 6 frames, 3 of them the sink, full from the
    # third chunk on.
    assert (row["kv_cache_frames"], row["sink_frames"], row["num_steps"]) == (6, 3, 4)
    assert len(row["warm_chunk_ms_by_index"]) == 3
    assert row["frames_per_s"] > 0 and row["steady_frames_per_s"] > 0
    assert 0 < row["attention_share"] and row["model_tflop_per_chunk"] > 0


def test_sampler_benchmark_times_the_routing_arms_on_a_variant(tmp_path):
  """--arms with --variant: each arm's sampler is the arm's config with the variant added, as
  videoar.sweep builds them (routing k and window from the arm, the model from the variant);
  routed@K and window@K set the arm's K."""
  out = tmp_path / "arms.json"
  subprocess.run(
      [sys.executable, "benchmarks/sampler.py", "--arms=noise_augmentation,routed,routed@1,window,"
       "window@1", "--variant=test", "--frames=4", "--repeats=1", f"--json={out}"],
      check=True, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  rows = {row["arm"]: row for row in json.loads(out.read_text())["arms"]}
  steps = bouncing_rf.get_config("routed,test").sample.num_steps
  assert steps != bouncing_rf.get_config("routed").sample.num_steps  # the variant shows
  assert all(row["num_steps"] == steps and row["ms_per_frame"] > 0 for row in rows.values())
  assert rows["routed"]["routing_top_k"] == 2 and rows["routed@1"]["routing_top_k"] == 1
  assert rows["noise_augmentation"]["routing_top_k"] == 0
  cache = {arm: rows[arm]["kv_cache_frames"] for arm in ("noise_augmentation", "window", "window@1")}
  assert cache["window@1"] < cache["window"] < cache["noise_augmentation"]


@pytest.mark.parametrize("arm", ["noise_augmentation@2", "routed@0", "window@x"])
def test_sampler_benchmark_refuses_an_arm_k_it_cannot_set(arm):
  """@K only on routed and window, with K a whole number >= 1: one line naming the arm, before
  any model is built."""
  result = subprocess.run(
      [sys.executable, "benchmarks/sampler.py", f"--arms={arm}", "--variant=test"],
      cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1].startswith(f"error: --arms={arm}: @K needs")


def test_write_json_creates_the_directory_it_is_given(tmp_path):
  import benchmarks
  path = tmp_path / "new" / "dir" / "figures.json"
  benchmarks.write_json(str(path), speedup=9.5)
  assert json.loads(path.read_text())["speedup"] == 9.5


def test_a_result_that_cannot_be_written_whole_leaves_the_earlier_one(tmp_path):
  """write_json truncated the earlier file (a committed docs/*.json) before json.dump ran, so a
  result that failed to serialise left an empty file."""
  import benchmarks
  path = tmp_path / "figures.json"
  benchmarks.write_json(str(path), speedup=9.5)
  with pytest.raises(TypeError):
    benchmarks.write_json(str(path), speedup=object())
  assert json.loads(path.read_text())["speedup"] == 9.5
  assert os.listdir(tmp_path) == ["figures.json"]
