"""python -m videoar.sweep: arms x seeds as command lines, run here, through submitit, or
printed; resumable; one table of mean and spread (videoar.eval.compare.combine)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from videoar import experiment, sweep
from videoar.data import pipeline
from videoar.eval import compare, digits, run

CONFIG = "configs/bouncing_rf.py"
ROOT_DIR = os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, os.path.join(ROOT_DIR, "configs"))
import bouncing_rf  # noqa: E402
import bouncing_tiny  # noqa: E402
import mnist_small  # noqa: E402


def _fake_eval(workdir, psnr, lost):
  """An eval.json as `evaluate` writes it, with two segments."""
  rows = [dict(segment="0-7", frames=8, psnr=psnr, lost=lost),
          dict(segment="8-15", frames=8, psnr=psnr - 1.0, lost=None)]
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "eval.json"), "w") as f:
    json.dump({"tables": {"model": rows, "copy_last": rows, "background": rows}}, f)


def _script(code):
  """A command line that runs `code` (standing in for videoar.main in the executors' tests)."""
  return (sys.executable, "-c", code)


def test_plan_gives_one_command_per_arm_and_seed(tmp_path):
  runs = sweep.plan(CONFIG, ["parallel", "teacher_forcing"], [0, 3], str(tmp_path), "occluded",
                    ("train.num_steps=7",), python="py")
  assert [(r.arm, r.seed) for r in runs] == [("parallel", 0), ("parallel", 3),
                                            ("teacher_forcing", 0), ("teacher_forcing", 3)]
  assert runs[1].argv == ("py", "-m", "videoar.main", f"--config={CONFIG}:parallel,occluded",
                          f"--workdir={tmp_path}/parallel/seed3", "--config.seed=3",
                          "--config.train.num_steps=7")
  assert not any(r.finished for r in runs)


def test_a_trained_run_without_its_evaluation_is_evaluated_not_trained(tmp_path):
  workdir = tmp_path / "parallel" / "seed0"
  (workdir / "checkpoints" / "4").mkdir(parents=True)
  (workdir / "run.json").write_text(json.dumps({"config": {"train": {"num_steps": 4}},
                                                "dataset": {}}))
  [run] = sweep.plan(CONFIG, ["parallel"], [0], str(tmp_path))
  assert run.argv[-1] == "--mode=evaluate"
  (workdir / "run.json").write_text(json.dumps({"config": {"train": {"num_steps": 6}},
                                                "dataset": {}}))
  [run] = sweep.plan(CONFIG, ["parallel"], [0], str(tmp_path))
  assert "--mode=evaluate" not in run.argv  # steps left: the command resumes training


def test_print_prints_the_unfinished_runs_then_the_finished_sweep_writes_its_table(
    tmp_path, capsys):
  args = [f"--config={CONFIG}", "--arms=parallel,teacher_forcing", "--seeds=0,1",
          f"--root={tmp_path}", "--executor=print", "--set=train.num_steps=3"]
  _fake_eval(tmp_path / "parallel" / "seed0", 20.0, 1.0)
  assert sweep.main(args) == 0
  printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("python")]
  assert printed == [
      f"python -m videoar.main --config={CONFIG}:{arm} --workdir={tmp_path}/{arm}/seed{seed}"
      f" --config.seed={seed} --config.train.num_steps=3"
      for arm, seed in [("parallel", 1), ("teacher_forcing", 0), ("teacher_forcing", 1)]]
  assert not (tmp_path / "sweep.md").exists()

  _fake_eval(tmp_path / "parallel" / "seed1", 24.0, 0.0)
  _fake_eval(tmp_path / "teacher_forcing" / "seed0", 18.0, 2.0)
  _fake_eval(tmp_path / "teacher_forcing" / "seed1", 18.0, 1.0)
  finished = {p: os.stat(p).st_mtime_ns for p in tmp_path.glob("*/seed*/eval.json")}
  assert sweep.main(args) == 0
  assert "videoar.main" not in capsys.readouterr().out
  assert {p: os.stat(p).st_mtime_ns for p in finished} == finished

  written = json.loads((tmp_path / "sweep.json").read_text())
  assert written["tables"] == compare.combine(
      {"parallel": [f"{tmp_path}/parallel/seed0", f"{tmp_path}/parallel/seed1"],
       "teacher_forcing": [f"{tmp_path}/teacher_forcing/seed0",
                           f"{tmp_path}/teacher_forcing/seed1"]})
  assert written["tables"]["parallel"][0]["psnr"] == 22.0
  assert written["tables"]["parallel sd"][0]["psnr"] == pytest.approx(np.std([20, 24], ddof=1))
  markdown = (tmp_path / "sweep.md").read_text()
  assert markdown.startswith("```bash\npython -m videoar.sweep --config=configs/bouncing_rf.py")
  assert "| parallel | 2 | 22.00 ± 2.83 | 21.00 ± 2.83 |" in markdown
  assert "| teacher_forcing | 2 | 1.50 ± 0.71 | - |" in markdown  # lost: null in segment 8-15


def test_compare_reads_a_kept_eval_json_as_its_workdir_and_names_a_missing_run(tmp_path, capsys):
  _fake_eval(tmp_path / "a" / "seed0", 20.0, 1.0)
  _fake_eval(tmp_path / "a" / "seed1", 24.0, 0.0)
  kept = tmp_path / "kept_seed1.json"
  kept.write_text((tmp_path / "a" / "seed1" / "eval.json").read_text())
  from_workdirs = compare.combine({"a": [f"{tmp_path}/a/seed0", f"{tmp_path}/a/seed1"]})
  assert compare.combine({"a": [f"{tmp_path}/a/seed0", str(kept)]}) == from_workdirs
  assert from_workdirs["a"][0]["psnr"] == 22.0

  with pytest.raises(SystemExit) as stopped:
    compare.main([f"a={tmp_path}/a/seed0,{tmp_path}/gone"])
  assert stopped.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith(f"error: a={tmp_path}/gone: no {tmp_path}/gone/eval.json") and \
      err.count("\n") == 1, err


def test_local_runs_each_command_and_names_the_failed_ones(tmp_path, capsys):
  runs = [sweep.Run("a", 0, str(tmp_path / "a" / "seed0"), _script("print('trained')")),
          sweep.Run("a", 1, str(tmp_path / "a" / "seed1"), _script("import sys; sys.exit(3)"))]
  failures = sweep.run_local(runs)
  assert failures == [f"a seed 1 exited 3 (see {tmp_path}/a/seed1.log)"]
  assert (tmp_path / "a" / "seed0.log").read_text() == "trained\n"


def test_submitit_local_runs_the_commands_as_jobs(tmp_path):
  write = "import os, sys; os.makedirs(sys.argv[1], exist_ok=True); open(sys.argv[1] + '/eval.json', 'w')"
  runs = [sweep.Run("a", seed, str(tmp_path / "a" / f"seed{seed}"),
                    _script(write) + (str(tmp_path / "a" / f"seed{seed}"),)) for seed in (0, 1)]
  runs.append(sweep.Run("b", 0, str(tmp_path / "b"), _script("import sys; sys.exit(5)")))
  failures = sweep.run_submitit(runs, str(tmp_path / "submitit"), "local", {"timeout_min": 2})
  assert runs[0].finished and runs[1].finished
  assert len(failures) == 1 and failures[0].startswith("b seed 0, job ")


@pytest.mark.parametrize("flags, message", [
    (["--arms=parallel,nope"], "--arms=nope: config variant 'nope' is unknown"),
    (["--arms=parallel,parallel"], "must name distinct variants"),
    (["--arms=parallel", "--seeds=0,x"], "--seeds='0,x' must be comma-separated integers"),
    (["--arms=parallel", "--set=train.num_steps"], "--set='train.num_steps' is not KEY=VALUE"),
    (["--arms=parallel", "--slurm=timeout_min=5"], "--slurm and --cluster are submitit's"),
    (["--arms=parallel", "--set=model.widht=3"],
     "--set=model.widht=3: the config of arm parallel has no such key"),
    (["--arms=parallel", "--set=model.width=abc"], "--set=model.width=abc: invalid literal for int"),
    (["--arms=parallel", "--set=sample.guidance_interval=(0.7,0.2)"],
     "arm parallel: config.sample.guidance_interval=(0.7, 0.2) is invalid"),
    (["--arms=parallel", "--set=model.patch=5"],  # only the world's frames refuse it
     "arm parallel: config.model.patch=5 is invalid: must divide the frame size 32x32"),
    (["--arms=parallel", "--variant=nope"], "--variant=nope: config variant 'nope' is unknown"),
    (["--arms=parallel", "--variant=occluded,moving_mnist"],
     "--variant=occluded,moving_mnist: config variants occluded and moving_mnist are two worlds"),
])
def test_bad_flags_stop_with_one_line(tmp_path, capsys, flags, message):
  with pytest.raises(SystemExit) as stopped:
    sweep.main([f"--config={CONFIG}", f"--root={tmp_path}", *flags])
  assert stopped.value.code == 2
  err = capsys.readouterr().err
  assert message in err and err.startswith("error: ") and err.count("\n") == 1, err
  assert not list(tmp_path.iterdir())


def test_a_root_under_a_file_stops_with_one_line_and_keeps_the_file(tmp_path, capsys):
  existing = tmp_path / "notes.txt"
  existing.write_text("kept")
  with pytest.raises(SystemExit) as stopped:
    sweep.main([f"--config={CONFIG}", f"--root={existing}/sweep", "--arms=parallel"])
  assert stopped.value.code == 2
  line = f"--root={existing}/sweep: not a directory ({existing} is a file)"
  assert line in capsys.readouterr().err
  assert existing.read_text() == "kept"


@pytest.mark.slow
def test_sweep_trains_evaluates_and_resumes_end_to_end(tmp_path):
  """2 arms x 2 seeds of the tiny config, each a real videoar.main run (about 4 min on one
  loaded core); a second sweep reruns nothing."""
  command = [sys.executable, "-m", "videoar.sweep", f"--config={CONFIG}",
             "--arms=teacher_forcing,parallel", "--seeds=0,1", f"--root={tmp_path}",
             "--variant=test,occluded", "--set=train.num_steps=2", "--set=sample.length_multiple=2"]
  done = subprocess.run(command, cwd=ROOT_DIR, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-2000:]
  evals = sorted(tmp_path.glob("*/seed*/eval.json"))
  assert len(evals) == 4
  mtimes = [os.stat(p).st_mtime_ns for p in evals]
  table = json.loads((tmp_path / "sweep.json").read_text())["tables"]
  assert set(table) == {"teacher_forcing", "teacher_forcing sd", "parallel", "parallel sd",
                        "copy_last", "background"}
  assert "recovered" in table["parallel"][1] and table["parallel"][0]["seeds"] == 2
  again = subprocess.run(command, cwd=ROOT_DIR, capture_output=True, text=True)
  assert again.returncode == 0 and "4 finished already" in again.stdout
  assert [os.stat(p).st_mtime_ns for p in evals] == mtimes
  # The same root under another --set holds no result of that command: refused, nothing rerun.
  other = subprocess.run(command[:-1] + ["--set=sample.length_multiple=3"], cwd=ROOT_DIR,
                         capture_output=True, text=True)
  assert other.returncode == 2, other.stderr[-2000:]
  assert other.stderr.strip().splitlines()[-1] == (
      f"error: {tmp_path}/teacher_forcing/seed0 holds the results of other values (recorded ->"
      " this command): sample.length_multiple 2 -> 3; use a new --root, or move that workdir"
      " away to run it again")
  assert [os.stat(p).st_mtime_ns for p in evals] == mtimes


def test_a_workdir_of_other_values_is_named_not_passed_off_as_the_commands(tmp_path):
  config = bouncing_rf.get_config("parallel").to_dict()
  [run] = sweep.plan(CONFIG, ["parallel"], [1], str(tmp_path))
  assert sweep.recorded_differently(run, config) is None  # nothing there yet
  record = json.loads(json.dumps(dict(config, seed=1)))
  (tmp_path / "parallel" / "seed1").mkdir(parents=True)
  (tmp_path / "parallel" / "seed1" / "run.json").write_text(json.dumps(
      {"config": dict(record, model=dict(record["model"], width=64)), "dataset": {}}))
  # Unfinished: refused where videoar.main would refuse to resume it ...
  assert sweep.recorded_differently(run, config) == (
      f"{run.workdir} holds a run of other values (recorded -> this command): model.width 64 ->"
      f" {config['model']['width']}; use a new --root, or move that workdir away to run it again")
  # ... and a longer run or another sampler would resume it.
  (tmp_path / "parallel" / "seed1" / "run.json").write_text(json.dumps(
      {"config": dict(record, sample=dict(record["sample"], num_steps=3)), "dataset": {}}))
  assert sweep.recorded_differently(run, config) is None
  # Finished: its evaluation's own config decides, the sampler included; how often it logged
  # does not count.
  _fake_eval(run.workdir, 20.0, 1.0)
  assert "sample.num_steps 3 -> " in sweep.recorded_differently(run, config)  # from run.json
  evaluation = json.loads((tmp_path / "parallel" / "seed1" / "eval.json").read_text())
  evaluation["config"] = dict(record, train=dict(record["train"], log_every=1))
  (tmp_path / "parallel" / "seed1" / "eval.json").write_text(json.dumps(evaluation))
  assert sweep.recorded_differently(run, config) is None
  evaluation["config"] = dict(record, seed=2)
  (tmp_path / "parallel" / "seed1" / "eval.json").write_text(json.dumps(evaluation))
  assert sweep.recorded_differently(run, config).startswith(
      f"{run.workdir} holds the results of other values (recorded -> this command): seed 2 -> 1;")


@pytest.mark.parametrize("arm", ["teacher_forcing", "noise_augmentation", "parallel",
                                 "autoregressive", "routed", "window"])
def test_default_model_arms_differ_from_the_default_run_only_in_their_forcing_and_routing(arm):
  default = bouncing_tiny.get_config().to_dict()
  config = bouncing_rf.get_config(f"{arm},default_model").to_dict()
  # The history guidance of the sampler needs the null history trained in every arm.
  assert config["forcing"]["history_drop_prob"] == default["forcing"]["history_drop_prob"] > 0
  config["model"]["routing_top_k"] = default["model"]["routing_top_k"]
  # The default job leaves FVD out of its final evaluation to fit its ten minutes; the arms keep
  # it. Scoring, not training.
  assert config["eval"]["fvd"] and not default["eval"]["fvd"]
  config["eval"]["fvd"] = False
  assert {k: v for k, v in config.items() if k != "forcing"} == \
      {k: v for k, v in default.items() if k != "forcing"}
  if arm == "noise_augmentation":
    assert config == default


@pytest.mark.parametrize("arm", ["teacher_forcing", "noise_augmentation", "parallel",
                                 "autoregressive"])
def test_moving_mnist_arms_train_on_mnist_smalls_world_and_are_scored_on_digits(arm):
  config = bouncing_rf.get_config(f"{arm},moving_mnist")
  assert config.data.to_dict() == mnist_small.get_config().data.to_dict()
  bouncing = bouncing_rf.get_config(arm).to_dict()
  assert {k: v for k, v in config.to_dict().items() if k != "data"} == \
      {k: v for k, v in bouncing.items() if k != "data"}
  exp = experiment.build(bouncing_rf.get_config(f"{arm},moving_mnist,test"))
  clips = pipeline.eval_clips(exp.source, num_clips=2, num_frames=10, seed=0)
  assert [type(s) for s in run.frame_scorers(exp, clips)] == [digits.DigitScorer]


def test_paired_counts_each_seed_against_the_same_seed(tmp_path, capsys):
  """Seed n of one arm against seed n of the other: a paired count the means cannot give (here
  b's mean lost is lower, yet a is below b at seed 0 and above at seed 1)."""
  _fake_eval(tmp_path / "a" / "seed0", 20.0, 1.0)
  _fake_eval(tmp_path / "a" / "seed1", 24.0, 3.0)
  _fake_eval(tmp_path / "b" / "seed0", 20.0, 1.5)
  _fake_eval(tmp_path / "b" / "seed1", 22.0, 0.5)
  a = [f"{tmp_path}/a/seed0", f"{tmp_path}/a/seed1"]
  b = [f"{tmp_path}/b/seed0", f"{tmp_path}/b/seed1"]
  counts = compare.paired(a, b)
  assert counts["lost"] == dict(below=1, equal=0, above=1, total=2)  # null segments left out
  assert counts["psnr"] == dict(below=0, equal=2, above=2, total=4)
  with pytest.raises(ValueError, match="as many runs"):
    compare.paired(a, b[:1])

  compare.main([f"a={','.join(a)}", f"b={','.join(b)}", "--paired=a:b"])
  assert "lost: 1 / 0 / 1 of 2" in capsys.readouterr().out
  with pytest.raises(SystemExit):
    compare.main([f"a={','.join(a)}", f"b={b[0]}", "--paired=a:b"])
  assert "seeds pair by position" in capsys.readouterr().err
