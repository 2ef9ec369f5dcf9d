"""A place a command writes into that cannot be written (an immutable or read-only workdir, a
$VIDEOAR_CACHE under /proc, a benchmark's --json in a folder that cannot be made), and data a
check cannot read (latents for FVD, too few held-out clips), are one line before the long work,
not a traceback after it; an evaluation that asks for FVD it cannot compute says why."""

import errno
import os
import shutil
import subprocess
import sys

from absl import flags
import jax
import numpy as np
import pytest

import benchmarks
from configs import wan_1p3b
from videoar import errors, experiment, files
from videoar.data import array_record
from videoar.eval import fvd_check, run

ROOT = os.path.join(os.path.dirname(__file__), "..")
TINY = "--config=configs/bouncing_tiny.py:test"


def creating_fails(folder) -> str | None:
  """Why a new file in `folder` cannot be made (its OSError's words); None when it can."""
  path = os.path.join(folder, "probe")
  try:
    with open(path, "x"):
      pass
  except OSError as e:
    return e.strerror
  os.unlink(path)
  return None


@pytest.fixture
def read_only():
  """read_only(folder) -> why nothing can be written in `folder` from then on: mode 0o555, and
  for root, whom modes do not stop, `chattr +i` too; the test is skipped where neither holds."""
  made = []

  def make(folder):
    made.append(folder)
    os.chmod(folder, 0o555)
    if creating_fails(folder) is None and shutil.which("chattr"):
      subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False)
    reason = creating_fails(folder)
    if reason is None:
      pytest.skip("no way to make a folder unwritable here (root, and chattr +i fails)")
    return reason

  yield make
  for folder in made:
    if shutil.which("chattr"):
      subprocess.run(["chattr", "-i", str(folder)], capture_output=True, check=False)
    os.chmod(folder, 0o755)


def test_unwritable_is_none_for_a_folder_a_file_can_be_written_in_and_leaves_it_as_it_was(
    tmp_path):
  (tmp_path / "kept").write_text("kept")
  assert files.unwritable(str(tmp_path)) is None
  assert os.listdir(tmp_path) == ["kept"]
  # Missing folders are made to try them, then removed.
  assert files.unwritable(str(tmp_path / "a" / "b")) is None
  assert os.listdir(tmp_path) == ["kept"]


def test_unwritable_says_why_and_leaves_nothing(tmp_path, read_only):
  folder = tmp_path / "folder"
  folder.mkdir()
  reason = read_only(folder)
  assert files.unwritable(str(folder)) == reason
  assert files.unwritable(str(folder / "a" / "b")) == reason
  assert os.listdir(folder) == []
  # /proc takes no new entry, whatever access() says for root.
  assert files.unwritable("/proc/videoar_test_x/y") == os.strerror(errno.ENOENT)


@pytest.mark.parametrize("mode", ["sample", "evaluate", "train"])
def test_a_workdir_that_cannot_be_written_is_one_line_before_any_mode_starts(tmp_path, read_only,
                                                                             mode):
  # Was a traceback after sampling (files.replaced_together), after the whole evaluation, or
  # after "resumed from step 4" (run.json's temporary file): the outputs lost.
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "kept").write_text("kept")
  reason = read_only(workdir)
  result = subprocess.run(
      [sys.executable, "-m", "videoar.main", TINY, f"--workdir={workdir}", f"--mode={mode}"],
      capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip() == f"error: cannot write to the workdir {workdir}: {reason}"
  assert os.listdir(workdir) == ["kept"]


@pytest.mark.parametrize("where", ["proc", "read-only"])
def test_a_cache_directory_that_cannot_be_made_or_written_is_one_line_before_anything_runs(
    tmp_path, read_only, where):
  # Was a FileNotFoundError (PermissionError) from the digit classifier's cache, once the run
  # had trained and sampled.
  if where == "proc":
    cache, reason = "/proc/videoar_test_cache", os.strerror(errno.ENOENT)
  else:
    (tmp_path / "ro").mkdir()
    cache, reason = str(tmp_path / "ro" / "cache"), read_only(tmp_path / "ro")
  workdir = tmp_path / "run"
  env = {**os.environ, files.CACHE_ENV: cache}
  result = subprocess.run(
      [sys.executable, "-m", "videoar.main", "--config=configs/mnist_small.py:test",
       f"--workdir={workdir}", "--mode=train"],
      capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip() == (
      f"error: the cache directory {cache} ($VIDEOAR_CACHE, default ~/.cache/videoar) cannot be"
      f" made: {reason}; set $VIDEOAR_CACHE to a directory this run can write")
  assert not workdir.exists()
  # A run that never touches the cache (the bouncing world without FVD) is not refused for it:
  # it goes on to its own line about the empty workdir.
  result = subprocess.run(
      [sys.executable, "-m", "videoar.main", TINY, f"--workdir={workdir}", "--mode=sample"],
      capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip() == (f"error: no checkpoint in {workdir}/checkpoints: train first"
                                   " (--mode=train or --mode=all)")


def test_a_benchmark_json_that_cannot_be_written_is_refused_as_the_flag_is_parsed(tmp_path):
  # /proc/...: a FileNotFoundError after the whole benchmark; empty: nothing written, no word.
  with pytest.raises(flags.ValidationError, match="^cannot write into /proc/videoar_nope: No"
                     " such file or directory$"):
    benchmarks._writable_file("/proc/videoar_nope/x.json")
  with pytest.raises(flags.ValidationError, match="^is empty; name the JSON file to write, or"
                     " leave --json out$"):
    benchmarks._writable_file("")
  assert benchmarks._writable_file(str(tmp_path / "new" / "x.json"))
  assert benchmarks._writable_file(None)
  assert os.listdir(tmp_path) == []


def write_frames(path, channels: int, num_sequences: int = 2) -> str:
  """Sequences as configs/wan_1p3b.py:tiny reads them: video [24, 8, 8, channels], text [4, 8]."""
  rng = np.random.default_rng(0)
  array_record.write_sequences(str(path), (
      {"video": rng.uniform(-1, 1, (24, 8, 8, channels)).astype(np.float32),
       "text": rng.standard_normal((4, 8)).astype(np.float32)} for _ in range(num_sequences)))
  return str(path)


def tiny_latent_config(path: str):
  config = wan_1p3b.get_config("tiny")
  config.data.path = path
  return config


def test_fvd_check_of_latents_or_too_few_held_out_clips_is_one_line_before_i3d(tmp_path):
  # Latents: a ValueError from I3D; too few clips: check_eval_clips' line, in a traceback, naming
  # keys this command does not read.
  config = tiny_latent_config(write_frames(tmp_path / "latents", channels=4))
  with pytest.raises(errors.ConfigError) as error:
    fvd_check.run(config, num_clips=2)
  assert str(error.value) == ("FVD and LPIPS need pixel frames (1 or 3 channels);"
                              " data.source='array_record' gives 4-channel frames (latents):"
                              " run it on a config of pixel frames")
  pixels = write_frames(tmp_path / "pixels", channels=3, num_sequences=4)
  # Half the sequences are held out whole (eval_fraction 0.5): 2 clips of 9 frames in each.
  with pytest.raises(errors.ConfigError) as error:
    fvd_check.run(tiny_latent_config(pixels), num_clips=100)
  assert str(error.value) == (
      "--num_clips=100 takes 2 x 100 held-out clips of 9 frames (eval.segment_len), and"
      f" ArrayRecordLatents(path={pixels!r}) holds out 4 at stride 1: lower --num_clips to 2 or"
      " fewer, or raise data.options.eval_fraction")


def test_why_no_fvd_says_why_for_each_case():
  config = tiny_latent_config("unused")
  assert run.why_no_fvd(config, (8, 8, 4)) == ("not computed (--config.eval.fvd=True computes"
                                                " it)")
  config.eval.fvd = True
  assert run.why_no_fvd(config, (8, 8, 4)) == ("not computed: the frames are latents of 4"
                                                " channels, and I3D reads pixel frames (1 or 3"
                                                " channels)")
  assert run.why_no_fvd(config, (8, 8, 3)) == ("not computed for 2 clips (it needs"
                                               f" {run.FVD_MIN_CLIPS})")
  config.eval.num_clips = run.FVD_MIN_CLIPS
  assert run.why_no_fvd(config, (8, 8, 1)) is None


def test_an_evaluation_of_latents_asked_for_fvd_says_it_was_not_computed_and_promises_no_minutes(
    tmp_path, capsys):
  # Printed "(FVD among them: minutes on a CPU)", then nothing about FVD.
  config = tiny_latent_config(write_frames(tmp_path / "latents", channels=4))
  config.eval.fvd = True
  config.sample.num_steps = 1
  exp = experiment.build(config)
  params = experiment.init_params(exp, jax.random.key(0))
  os.mkdir(tmp_path / "run")
  run.evaluate(exp, params, str(tmp_path / "run"), checkpoint_step=None)
  out = capsys.readouterr().out
  assert "minutes" not in out
  line = ("FVD: not computed: the frames are latents of 4 channels, and I3D reads pixel frames"
          " (1 or 3 channels).")
  assert line in out and line in (tmp_path / "run" / "eval.txt").read_text()


def test_a_digit_classifier_cache_that_cannot_be_written_keeps_none_and_the_evaluation_goes_on(
    capsys):
  # Was a FileNotFoundError from os.makedirs, after training and sampling (a caller other than
  # videoar.main, which refuses such a $VIDEOAR_CACHE first, still gets here).
  from videoar.eval import digits  # pylint: disable=import-outside-toplevel

  classifier = digits.load_or_train(16, "/proc/videoar_test_digits")
  assert classifier.held_out_accuracy > 0.9
  assert capsys.readouterr().out.rstrip().endswith(
      ", not kept: /proc/videoar_test_digits cannot be written (No such file or directory); set"
      " $VIDEOAR_CACHE to a folder this process can write")


def test_a_video_folder_run_is_refused_for_the_cache_only_when_its_folder_cannot_hold_its_frames(
    tmp_path, read_only):
  """A video folder caches its frames in DATA/.videoar_cache where it can
  (video_folder.caches_in_place), else under $VIDEOAR_CACHE: only then does an unusable cache
  stop the run before it starts."""
  env = {**os.environ, files.CACHE_ENV: "/proc/videoar_test_cache"}

  def run_on(data):
    return subprocess.run(
        [sys.executable, "-m", "videoar.main", "--config=configs/video_folder.py:test",
         f"--config.data.path={data}", f"--workdir={tmp_path / 'run'}", "--mode=train"],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)

  writable = tmp_path / "videos"
  writable.mkdir()
  # Past the cache check, to the data's own line (an empty folder).
  assert "cache directory" not in run_on(writable).stderr
  shared = tmp_path / "shared"
  shared.mkdir()
  read_only(shared)
  refused = run_on(shared)
  assert refused.returncode == 2, refused.stderr[-2000:]
  assert refused.stderr.strip().startswith(
      "error: the cache directory /proc/videoar_test_cache ($VIDEOAR_CACHE, default"
      " ~/.cache/videoar) cannot be made:")
