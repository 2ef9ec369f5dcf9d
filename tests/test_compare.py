"""videoar.eval.compare and videoar.eval.learning_curve from the command line: what they refuse
in one line before writing anything, and the notes they print. Finished runs are faked by their
eval.json, run.json and metrics.jsonl: nothing here trains."""

import json
import os
import subprocess
import sys

import pytest

from videoar import base_config
from videoar.eval import compare
from videoar.train import workdir as workdir_lib

ROOT = os.path.join(os.path.dirname(__file__), "..")
SEGMENTS = ("0-7", "8-15", "16-23")


def _evaluated(workdir, segments=3, lost=1.0):
  """WORKDIR/eval.json as an evaluation over the first `segments` of SEGMENTS writes it; the
  workdir's path."""
  rows = [dict(segment=segment, frames=8, psnr=20.0 - i, lost=lost + i)
          for i, segment in enumerate(SEGMENTS[:segments])]
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "eval.json"), "w") as f:
    json.dump({"tables": {"model": rows, "copy_last": rows, "background": rows}}, f)
  return str(workdir)


def _tool(module, *args):
  return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                        timeout=300, cwd=ROOT)


def _refused(result) -> str:
  """The one line a refusal printed, after checking it printed nothing else."""
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stdout == "" and len(result.stderr.splitlines()) == 1, result.stderr[-2000:]
  return result.stderr.strip()


def test_compare_refuses_an_output_that_exists_and_keeps_it(tmp_path):
  """--json=W3/eval.json (another run's evaluation, not an input) was overwritten, exit 0."""
  w1, w3 = _evaluated(tmp_path / "w1"), _evaluated(tmp_path / "w3", segments=2)
  kept = open(f"{w3}/eval.json", "rb").read()
  (tmp_path / "notes.md").write_text("mine")
  os.symlink(tmp_path / "nowhere", tmp_path / "link.json")
  for flag, path in (("--json", f"{w3}/eval.json"), ("--markdown", f"{tmp_path}/notes.md"),
                     ("--json", f"{tmp_path}/link.json")):
    assert _refused(_tool("videoar.eval.compare", f"a={w1}", f"{flag}={path}")) == (
        f"error: {flag}={path} exists; name a new file, or move it away first")
  assert open(f"{w3}/eval.json", "rb").read() == kept
  assert (tmp_path / "notes.md").read_text() == "mine"
  assert not (tmp_path / "nowhere").exists()
  same = f"{tmp_path}/out"
  assert _refused(_tool("videoar.eval.compare", f"a={w1}", f"--json={same}",
                        f"--markdown={same}")) == (
      f"error: --json={same} and --markdown={same} name one file; name two")
  assert not os.path.exists(same)
  written = _tool("videoar.eval.compare", f"a={w1}", f"--json={tmp_path}/out.json",
                  f"--markdown={tmp_path}/out.md")
  assert written.returncode == 0, written.stderr[-2000:]
  assert set(json.loads((tmp_path / "out.json").read_text())) == {"a", "copy_last", "background"}
  assert "| a | 1 | 1.00 | 2.00 | 3.00 |" in (tmp_path / "out.md").read_text()
  # Written whole beside the target and renamed: no temporary file is left, and the mode is an
  # ordinary file's.
  assert sorted(os.listdir(tmp_path)) == ["link.json", "notes.md", "out.json", "out.md", "w1",
                                          "w3"]
  assert os.stat(tmp_path / "out.json").st_mode & 0o777 == 0o644


def test_paired_refuses_runs_over_other_segments_before_printing(tmp_path):
  """A run evaluated over 2 segments against one over 3 printed the table, then a ValueError's
  traceback, exit 1."""
  w1, w3 = _evaluated(tmp_path / "w1"), _evaluated(tmp_path / "w3", segments=2)
  assert _refused(_tool("videoar.eval.compare", f"a={w1}", f"b={w3}", "--paired=a:b")) == (
      f"error: --paired=a:b: {w1} has segments 0-7, 8-15, 16-23 and {w3} 0-7, 8-15; seeds pair"
      " segment by segment, so evaluate both arms over the same segments")
  with pytest.raises(ValueError, match=f"^{w1} has segments 0-7, 8-15, 16-23 and {w3} 0-7, 8-15$"):
    compare.paired([w1], [w3])
  both = _tool("videoar.eval.compare", f"a={w1}", f"b={_evaluated(tmp_path / 'w2', lost=2.0)}",
               "--paired=a:b")
  assert both.returncode == 0, both.stderr[-2000:]
  assert "  lost: 3 / 0 / 0 of 3" in both.stdout.splitlines()


def test_an_arms_seeds_over_other_segments_are_refused(tmp_path):
  """The mean over an arm's seeds paired their rows in order: a seed evaluated over 2 segments
  cut the arm's table to 2 without a word."""
  w1, w3 = _evaluated(tmp_path / "w1"), _evaluated(tmp_path / "w3", segments=2)
  assert _refused(_tool("videoar.eval.compare", f"a={w1},{w3}")) == (
      f"error: a={w1},{w3}: {w1} has segments 0-7, 8-15, 16-23 and {w3} 0-7, 8-15; an arm's seeds"
      " are averaged segment by segment, so evaluate them over the same segments")


@pytest.mark.parametrize("name", ["copy_last", "background", "a sd", "a n"])
def test_compare_refuses_an_arm_named_like_a_row_it_adds(tmp_path, name):
  """Such an arm silently replaced a baseline, or (a=W1,W2 'a sd=W1') put W1's figures in the
  row read as a's standard deviation."""
  w1, w2 = _evaluated(tmp_path / "w1"), _evaluated(tmp_path / "w2", lost=2.0)
  assert _refused(_tool("videoar.eval.compare", f"a={w1},{w2}", f"{name}={w1}")) == (
      f"error: arm {name!r} is named like a row compare adds (copy_last, background, or NAME sd"
      " and NAME n under an arm of several seeds); name it otherwise")


def _trained(workdir, seed, depth):
  """A workdir with a run.json of the base config (this seed and model.depth) and a
  metrics.jsonl holding one evaluation; its path."""
  config = base_config.get_config()
  config.seed, config.model.depth = seed, depth
  os.makedirs(workdir)
  workdir_lib.RunRecord(config.to_dict(), {}).save(str(workdir))
  (workdir / "metrics.jsonl").write_text(
      json.dumps({"step": 100, "steps_per_s": 1.0}) + "\n"
      + json.dumps({"step": 100, "eval/lost/0-7": 1.0 + seed}) + "\n")
  return str(workdir)


def test_the_learning_curve_notes_runs_of_another_recipe_as_compare_does(tmp_path):
  """Runs of another model.depth were averaged as seeds of one arm without a word, where compare
  notes them; another seed is no difference."""
  runs = [_trained(tmp_path / "s0", 0, 1), _trained(tmp_path / "s1", 1, 1),
          _trained(tmp_path / "s2", 2, 2)]
  result = _tool("videoar.eval.learning_curve", f"--workdir={','.join(runs)}", "--metrics=lost")
  assert result.returncode == 0, result.stderr[-2000:]
  notes = [line for line in result.stdout.splitlines() if line.startswith("note:")]
  assert notes == [f"note: {runs[2]} differs from {runs[0]} in model.depth 1 -> 2: its mean is"
                   " not one recipe's over seeds"]
  assert "| 100 | 1.7 | 2.00 ± 1.00 |" in result.stdout


def test_a_path_with_a_comma_is_named_where_commas_separate_runs(tmp_path):
  """Such a path was split, and the line named only a piece of it."""
  workdir = _trained(tmp_path / "p,c", 0, 1)
  _evaluated(workdir)
  assert _refused(_tool("videoar.eval.learning_curve", f"--workdir={workdir}")) == (
      f"error: --workdir={tmp_path}/p holds no metrics.jsonl, but {workdir} exists: the path"
      " contains a comma, which separates runs here; rename the folder or link it")
  other = _evaluated(tmp_path / "other")
  assert _refused(_tool("videoar.eval.compare", f"a={other},{workdir}")) == (
      f"error: a={tmp_path}/p: no {tmp_path}/p/eval.json, but {workdir} exists: the path contains"
      " a comma, which separates an arm's runs here; rename the folder or link it")
  assert compare.comma_split_path([other, f"{tmp_path}/p", "c", other], 2) == workdir
  assert compare.comma_split_path([f"{tmp_path}/p", "d"], 0) is None


def test_the_learning_curve_by_default_prints_the_default_metrics_a_run_has(tmp_path):
  """The default --metrics list is the bouncing world's: a run of another world, which logs only
  some of it, was refused instead of shown what it has. Named on the command line, a metric the
  run lacks is still refused."""
  workdir = _trained(tmp_path / "run", 0, 1)  # its evaluation logs lost only
  result = _tool("videoar.eval.learning_curve", f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "lost per segment" in result.stdout and "| 100 | 1.7 | 1 |" in result.stdout
  assert "invented" not in result.stdout
  assert _refused(_tool("videoar.eval.learning_curve", f"--workdir={workdir}",
                        "--metrics=lost,invented")) == (
      "error: --metrics=lost,invented: invented not evaluated in these runs; allowed: lost")


def test_the_mean_over_seeds_leaves_out_a_seeds_nan_figure():
  """Guards against averaging a NaN figure in: the mean (and count) over seeds must be over the
  seeds with a finite number, not NaN because one seed's figure is."""
  tables = [[dict(segment="0-7", frames=8, psnr=20.0, lost=1.0)],
            [dict(segment="0-7", frames=8, psnr=float("nan"), lost=3.0)]]
  assert compare._mean_tables(tables) == [
      dict(segment="0-7", frames=8, psnr=20.0, lost=2.0, seeds=2)]
  assert compare._mean_tables(tables, statistic=len)[0]["psnr"] == 1


def test_a_figure_no_seed_has_is_not_noted_as_partial(tmp_path):
  """Guards against noting a figure that no seed has a number for (0 of 2 seeds, e.g. FVD never
  computed) as a partial figure: only figures some but not all seeds have are noted."""
  for seed, psnr in enumerate((20.0, None)):
    os.makedirs(tmp_path / f"seed{seed}")
    row = dict(segment="0-7", frames=8, psnr=psnr, fvd=None)
    (tmp_path / f"seed{seed}" / "eval.json").write_text(json.dumps({"tables": {"model": [row]}}))
  combined = compare.combine({"arm": [str(tmp_path / "seed0"), str(tmp_path / "seed1")]})
  assert combined["arm"][0]["fvd"] is None and combined["arm n"][0]["fvd"] == 0
  assert compare.partial_figures(combined) == [
      "arm: psnr 0-7 over 1 of 2 seeds (the others have no finite number)"]


def test_combined_arms_show_the_baselines_of_the_first_run(tmp_path):
  """Guards against the baselines (copy_last, background) being taken from each arm in turn,
  so that the last arm's overwrote the first run's."""
  first, second = _evaluated(tmp_path / "a", lost=1.0), _evaluated(tmp_path / "b", lost=5.0)
  with open(os.path.join(first, "eval.json")) as f:
    baselines = {k: v for k, v in json.load(f)["tables"].items() if k in compare.BASELINES}
  combined = compare.combine({"a": [first], "b": [second]})
  assert {k: combined[k] for k in compare.BASELINES} == baselines
  assert combined["copy_last"][0]["lost"] == 1.0


@pytest.mark.parametrize("flag", ["--json", "--markdown"])
def test_compare_refuses_an_output_it_cannot_write_or_an_empty_one_before_printing(tmp_path,
                                                                                   flag):
  """--json=/proc/x.json printed the table, then a FileNotFoundError's traceback, exit 1; an
  empty --json wrote nothing without a word, exit 0."""
  w1 = _evaluated(tmp_path / "w1")
  assert _refused(_tool("videoar.eval.compare", f"a={w1}", f"{flag}=/proc/videoar_x.out")) == (
      f"error: {flag}=/proc/videoar_x.out: cannot write into /proc: No such file or directory")
  assert _refused(_tool("videoar.eval.compare", f"a={w1}", f"{flag}=")) == (
      f"error: {flag} is empty; name the file to write")
  assert os.listdir(tmp_path) == ["w1"]


def test_unwritable_file_says_why_a_file_cannot_be_written_and_makes_nothing(tmp_path):
  from videoar import files
  (tmp_path / "a_file").write_text("mine")
  assert files.unwritable_file("") == "is empty; name the file to write"
  assert files.unwritable_file(str(tmp_path), "the JSON file") == (
      "is a directory; name the JSON file to write")
  assert files.unwritable_file(f"{tmp_path}/a_file/x/y.json") == (
      f"{tmp_path}/a_file is a file, not a directory to write into")
  assert files.unwritable_file("/proc/videoar_nope/x.json") == (
      "cannot write into /proc/videoar_nope: No such file or directory")
  # A folder yet to be made can be: the command makes it when it writes.
  assert files.unwritable_file(f"{tmp_path}/new/x.json") is None
  assert files.unwritable_file(f"{tmp_path}/a_file") is None  # replaced, where a command may
  assert sorted(os.listdir(tmp_path)) == ["a_file"]


def test_the_learning_curve_refuses_one_run_named_twice_by_other_paths(tmp_path):
  """--workdir=W,W/ (or W,X/../W) averaged one run with itself as two seeds: a table of
  "6.50 ± 0.00", exit 0, where compare refuses an arm that names one evaluation twice."""
  workdir = _trained(tmp_path / "run", 0, 1)
  os.makedirs(tmp_path / "x")
  for second in (f"{workdir}/", f"{tmp_path}/x/../run"):
    assert _refused(_tool("videoar.eval.learning_curve", f"--workdir={workdir},{second}")) == (
        f"error: --workdir={workdir},{second}: {workdir} and {second} are one run; each workdir"
        " is one seed")


def test_the_learning_curve_refuses_a_metrics_log_that_is_a_folder_and_empty_metrics(tmp_path):
  """A metrics.jsonl that is a folder was an IsADirectoryError's traceback; --metrics= printed
  a blank line, exit 0."""
  workdir = _trained(tmp_path / "run", 0, 1)
  assert _refused(_tool("videoar.eval.learning_curve", f"--workdir={workdir}", "--metrics=")) == (
      "error: --metrics is empty; name the metrics to print; allowed: lost")
  os.makedirs(tmp_path / "folder" / "metrics.jsonl")
  assert _refused(_tool("videoar.eval.learning_curve", f"--workdir={tmp_path}/folder")) == (
      f"error: {tmp_path}/folder/metrics.jsonl is a directory, not a run's metrics log: name the"
      " workdir of a run")
