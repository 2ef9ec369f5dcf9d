"""The benchmarks' runners: built from a config alone, they step and stream like training."""

import json
import os
import subprocess
import sys
import threading

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


# benchmarks/sampler.py with attention that fails at run time for impl='blocked', as cudnn does
# on a GPU for a call it does not serve (an impl the platform cannot run is refused up front).
FAILING_BLOCKED = """
import runpy, sys
from videoar.attention import ops
attention = ops.attention
def failing(*args, impl="auto", **kwargs):
  if impl == "blocked":
    raise ValueError("attention impl='blocked' does not serve this call: the test's failure")
  return attention(*args, impl=impl, **kwargs)
ops.attention = failing
sys.argv[0] = "benchmarks/sampler.py"
runpy.run_path("benchmarks/sampler.py", run_name="__main__")
"""


def test_sampler_benchmark_streams_the_configs_sampler(tmp_path):
  """The GPU benchmark's code path (configs/wan_1p3b.py: latents, text, scanned blocks, sink)
  at the tiny shape: each impl streams, timings per chunk, the profile's figures. An impl that
  fails at run time (here blocked, made to fail as cudnn does on a GPU for a call it does not
  serve) does not take the impls after it: exit 1, its error recorded."""
  out = tmp_path / "sampler.json"
  proc = subprocess.run(
      [sys.executable, "-c", FAILING_BLOCKED, "--config=configs/wan_1p3b.py:sampler,tiny",
       "--frame_shape=8,8,4", "--chunks=3", "--impls=auto,blocked,dense", "--text_tokens=4",
       "--video_frames_per_frame=4", f"--json={out}"],
      cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True)
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert ("--impls: blocked failed: ValueError: attention impl='blocked' does not serve this call"
          in proc.stdout)
  assert "Traceback" not in proc.stderr  # the dispatcher's refusal is its one line
  result = json.loads(out.read_text())
  assert [row["impl"] for row in result["impls"]] == ["auto", "dense"]
  assert list(result["failed"]) == ["blocked"]
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


def run_benchmark(*args, timeout=120):
  """A benchmark script run on the CPU, as a user would: its exit status and output."""
  return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=timeout)


def last_line(result) -> str:
  lines = result.stderr.strip().splitlines()
  return lines[-1] if lines else ""


CUDNN_ON_CPU = ("needs a GPU and this host runs on 'cpu': use auto, which picks cuDNN on a GPU")


@pytest.mark.parametrize("args,line", [
    (["benchmarks/attention.py", "--impl=cudnn", "--repeats=1"],
     f"error: --impl=cudnn: {CUDNN_ON_CPU}"),
    (["benchmarks/train_step.py", "--impls=cudnn", "--steps=1"],
     f"error: --impls=cudnn: {CUDNN_ON_CPU}"),
    (["benchmarks/sampler.py", "--impls=cudnn", "--chunks=2"],
     f"error: --impls=cudnn: {CUDNN_ON_CPU}"),
    # With others beside it too: it can never run here, and the others' minutes would end in
    # exit status 1 all the same (a run-time failure is test_sampler_benchmark_streams_...).
    (["benchmarks/sampler.py", "--impls=dense,cudnn", "--chunks=2"],
     f"error: --impls=dense,cudnn: cudnn {CUDNN_ON_CPU}"),
], ids=["attention", "train_step", "sampler", "sampler_with_others"])
def test_benchmarks_refuse_an_impl_the_host_cannot_run(args, line):
  """cudnn on a CPU host: one line when the flags are read, not a traceback after building (an
  `every impl failed` after 8 s from the sampler)."""
  result = run_benchmark(*args, timeout=60)
  assert result.returncode == 2, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert last_line(result) == line


@pytest.mark.parametrize("args", [
    ["benchmarks/attention.py", "--impl=pallas", "--repeats=1"],
    ["benchmarks/train_step.py", "--impls=pallas", "--steps=1"],
    ["benchmarks/sampler.py", "--impls=pallas", "--chunks=2"],
], ids=["attention", "train_step", "sampler"])
def test_benchmarks_say_pallas_on_a_cpu_times_interpret_mode(args):
  """Pallas on a CPU runs in interpret mode for minutes: a note says so before it starts (the
  run is not waited for)."""
  proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                          stdout=subprocess.DEVNULL, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  deadline = threading.Timer(60, proc.kill)  # a note that never comes: minutes of Pallas
  deadline.start()
  try:
    lines = []
    for line in proc.stderr:
      lines.append(line)
      if line.startswith("note: ") or len(lines) > 50:
        break
  finally:
    deadline.cancel()
    proc.kill()
    proc.wait()
  impl_flag = args[1]
  assert lines and lines[-1].strip() == (
      f"note: {impl_flag} on a 'cpu' host runs Pallas in interpret mode: its timings are"
      " interpret mode's and say nothing of the kernel"), lines


@pytest.mark.parametrize("tokens", ["-3", "0"])
def test_sampler_benchmark_refuses_text_tokens_that_are_not_positive(tokens):
  """Was an MLIRError's traceback after building (-3), or an embedding of no tokens (0)."""
  result = run_benchmark("benchmarks/sampler.py", "--config=configs/wan_1p3b.py:tiny",
                         "--frame_shape=8,8,4", f"--text_tokens={tokens}", timeout=60)
  assert result.returncode == 2, result.stderr[-2000:]
  assert last_line(result) == (
      f"error: flag --text_tokens={tokens}: {tokens} is not a positive integer")


def test_sampler_benchmark_refuses_flags_its_arms_replace():
  """--arms times configs/bouncing_rf.py's arms: --config (and --impls, --chunks, ...) were
  ignored without a word, exit 0."""
  result = run_benchmark("benchmarks/sampler.py", "--arms=routed",
                         "--config=configs/mnist_small.py", "--chunks=3", timeout=60)
  assert result.returncode == 2, result.stderr[-2000:]
  assert last_line(result) == (
      "error: --arms=routed with --config, --chunks: each arm's config (a variant of"
      " configs/bouncing_rf.py) sets the model and its sampler, so these do not apply; leave"
      " them out, or --arms")


def test_sampler_benchmark_refuses_video_frames_per_frame_on_pixels():
  """--video_frames_per_frame=4 on bouncing_tiny's RGB frames multiplied its frames/s by 4: it
  is for latents, each decoding to several video frames."""
  result = run_benchmark("benchmarks/sampler.py", "--video_frames_per_frame=4", "--chunks=2",
                         timeout=60)
  assert result.returncode == 2, result.stderr[-2000:]
  assert last_line(result) == (
      "error: --video_frames_per_frame=4: the model's frames are pixels (32x32x3), each one"
      " video frame; it is for latents (e.g. --frame_shape=60,104,16 of Wan's VAE): leave it at"
      " 1")


def test_train_step_benchmark_names_the_patch_flag():
  """Was `config.model.fine_patch=4 is invalid`, a key the user never set."""
  result = run_benchmark("benchmarks/train_step.py", "--patch=5", "--steps=1", timeout=60)
  assert result.returncode == 2, result.stderr[-2000:]
  assert last_line(result) == (
      "error: flag --patch=5: allowed: 1, 2, 4, 8, 16, 32 (divisors of bouncing_tiny's 32x32"
      " frames)")
