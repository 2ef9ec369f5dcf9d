"""docs/rollout_paths.py from the command line: what it refuses in one line before generating
(an output it cannot write, or would write over; a model other than the workdir's run.json's),
and the JSON it writes (strict, whole)."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
MNIST = "--config=configs/mnist_small.py:test"


def _mnist_config():
  spec = importlib.util.spec_from_file_location(
      "mnist_small_config", os.path.join(ROOT, "configs", "mnist_small.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("test")


def _rollout_paths(*args):
  return subprocess.run([sys.executable, "docs/rollout_paths.py", *args], capture_output=True,
                        text=True, timeout=300, cwd=ROOT)


def _refused(result) -> str:
  """The one line a refusal printed, after checking it printed nothing else."""
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stdout == "" and len(result.stderr.splitlines()) == 1, result.stderr[-2000:]
  return result.stderr.strip()


@pytest.fixture
def workdir(trained_stage):
  """A workdir that looks trained with configs/mnist_small.py:test to the checks made before
  any checkpoint is read: its run.json and an empty finished checkpoint."""
  return trained_stage("run", _mnist_config())


def test_rollout_paths_refuses_a_json_it_would_write_over_or_cannot_write(workdir, tmp_path):
  """--json=EXISTING was written over, in place, after the minutes of generation; a --json in a
  folder that does not exist was a traceback after them; an empty one wrote nothing."""
  (tmp_path / "mine.json").write_text("mine")
  for path, line in (
      (f"{tmp_path}/mine.json",
       f"--json={tmp_path}/mine.json exists; name a new file, or move it away first"),
      (f"{tmp_path}/no/out.json", f"--json={tmp_path}/no/out.json: no folder {tmp_path}/no"),
      ("/proc/videoar_x.json",
       "--json=/proc/videoar_x.json: cannot write into /proc: No such file or directory"),
      ("", "--json is empty; name the file to write")):
    assert _refused(_rollout_paths(MNIST, f"--workdir={workdir}", f"--json={path}")) == (
        f"error: {line}")
  assert (tmp_path / "mine.json").read_text() == "mine"
  assert sorted(os.listdir(tmp_path)) == ["mine.json", "run"]


def test_rollout_paths_refuses_a_model_other_than_the_runs_as_evaluate_does(workdir):
  """With --config.model.prediction=velocity on a run trained with data prediction, every
  figure was computed with the wrong model, without a word; videoar.main refuses it."""
  assert _refused(_rollout_paths(MNIST, f"--workdir={workdir}",
                                 "--config.model.prediction=velocity")) == (
      f"error: {workdir} was trained with another model: model.prediction data -> velocity"
      " (its run.json -> this command); pass the values it was trained with")


def test_rollout_paths_writes_strict_json_whole(tmp_path):
  """A figure that is not a number (the digit accuracy of a segment without a readable digit)
  was written as a bare NaN, which strict JSON readers refuse; the file was written in place."""
  workdir = tmp_path / "run"
  trained = subprocess.run(
      [sys.executable, "-m", "videoar.main", MNIST, f"--workdir={workdir}", "--mode=train"],
      capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert trained.returncode == 0, trained.stderr[-2000:]
  out = tmp_path / "out.json"
  result = _rollout_paths(MNIST, f"--workdir={workdir}", f"--json={out}",
                          "--metrics=digit_accuracy,ink_ratio")
  assert result.returncode == 0, result.stderr[-2000:]

  def refuse(constant):
    raise AssertionError(f"{constant} is not strict JSON")

  written = json.loads(out.read_text(), parse_constant=refuse)
  printed = result.stdout.splitlines()
  for metric in ("digit_accuracy", "ink_ratio"):
    lines = printed[printed.index(metric) + 1:printed.index(metric) + 5]
    for line, (way, rows) in zip(lines, written.items()):
      figures = [None if figure == "nan" else float(figure)
                 for figure in line[len(f"  {way:36s} "):].split(" / ")]
      assert [None if row[metric] is None else round(row[metric], 3) for row in rows] == figures
  assert None in [row["digit_accuracy"] for rows in written.values() for row in rows]
  assert sorted(os.listdir(tmp_path)) == ["out.json", "run"]
  assert os.stat(out).st_mode & 0o777 == 0o644
