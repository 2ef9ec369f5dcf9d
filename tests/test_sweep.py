"""python -m videoar.sweep: arms x seeds as command lines, run here, through submitit, or
printed; resumable; one table of mean and spread (videoar.eval.compare.combine)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import shutil

import numpy as np
import pytest

from videoar import errors, experiment, sweep
from videoar.data import pipeline
from videoar.eval import compare, digits, run
from videoar.train import workdir as workdir_lib

CONFIG = "configs/bouncing_rf.py"
ROOT_DIR = os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, os.path.join(ROOT_DIR, "configs"))
import bouncing_rf  # noqa: E402
import bouncing_sf  # noqa: E402
import bouncing_tiny  # noqa: E402
import mnist_small  # noqa: E402


def _fake_eval(workdir, psnr, lost, **recorded):
  """An eval.json as `evaluate` writes it, with two segments, and the `recorded` keys (config,
  checkpoint_step) where given."""
  rows = [dict(segment="0-7", frames=8, psnr=psnr, lost=lost),
          dict(segment="8-15", frames=8, psnr=psnr - 1.0, lost=None)]
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "eval.json"), "w") as f:
    json.dump({"tables": {"model": rows, "copy_last": rows, "background": rows}, **recorded}, f)


def _script(code):
  """A command line that runs `code` (standing in for videoar.main in the executors' tests)."""
  return (sys.executable, "-c", code)


def test_plan_gives_one_command_per_arm_and_seed(tmp_path):
  runs = sweep.plan(CONFIG, ["parallel", "teacher_forcing"], [0, 3], str(tmp_path),
                    {"parallel": 7, "teacher_forcing": 7}, "occluded", ("train.num_steps=7",),
                    python="py")
  assert [(r.arm, r.seed) for r in runs] == [("parallel", 0), ("parallel", 3),
                                            ("teacher_forcing", 0), ("teacher_forcing", 3)]
  assert runs[1].argv == ("py", "-m", "videoar.main", f"--config={CONFIG}:parallel,occluded",
                          f"--workdir={tmp_path}/parallel/seed3", "--config.seed=3",
                          "--config.train.num_steps=7")
  assert not any(r.finished for r in runs)


def test_a_trained_run_without_its_evaluation_is_evaluated_not_trained(tmp_path):
  """Trained to the command's train.num_steps: evaluated. Short of it, trained on, whatever its
  run.json says: a sweep rerun with more steps than the run was started with (--set
  train.num_steps) trains it on rather than evaluating the old model again and again."""
  workdir = tmp_path / "parallel" / "seed0"
  (workdir / "checkpoints" / "4").mkdir(parents=True)
  (workdir / "run.json").write_text(json.dumps({"config": {"train": {"num_steps": 4}},
                                                "dataset": {}}))
  [run] = sweep.plan(CONFIG, ["parallel"], [0], str(tmp_path), {"parallel": 4})
  assert run.argv[-1] == "--mode=evaluate"
  [run] = sweep.plan(CONFIG, ["parallel"], [0], str(tmp_path), {"parallel": 6})
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


def test_a_run_evaluated_before_its_last_step_is_trained_on_not_tabled(tmp_path, capsys):
  """Stopped at step 53 of 400 and evaluated there (`--mode=evaluate`): the sweep trains it on
  rather than tabling the 53-step model. It is finished once its newest checkpoint is at
  train.num_steps, and the step its eval.json records having evaluated, where it records one."""
  config = bouncing_rf.get_config("parallel")
  config.train.num_steps = 400
  config.seed = 0
  record = workdir_lib.RunRecord(config.to_dict(), {})
  workdir = tmp_path / "parallel" / "seed0"
  (workdir / "checkpoints" / "53").mkdir(parents=True)
  record.save(str(workdir))
  _fake_eval(workdir, 20.0, 1.0, config=record.config)
  args = [f"--config={CONFIG}", "--arms=parallel", f"--root={tmp_path}", "--executor=print",
          "--set=train.num_steps=400"]
  assert sweep.main(args) == 0
  out = capsys.readouterr().out.splitlines()
  assert out[0] == f"sweep: 1 runs, 0 finished already ({tmp_path})"
  assert out[1] == (f"python -m videoar.main --config={CONFIG}:parallel --workdir={workdir}"
                    " --config.seed=0 --config.train.num_steps=400")  # resumes training
  assert not (tmp_path / "sweep.md").exists()
  assert sweep.unfinished(str(workdir)) == (
      f"{workdir}/eval.json is of step 53, not train.num_steps=400 (evaluated before its"
      " training finished)")

  (workdir / "checkpoints" / "400").mkdir()
  assert sweep.main(args) == 0
  assert f"sweep: 1 runs, 1 finished already ({tmp_path})" in capsys.readouterr().out
  assert (tmp_path / "sweep.md").exists()

  # Trained on to 400 but stopped during its new evaluation: the eval.json left is step 53's.
  _fake_eval(workdir, 20.0, 1.0, config=record.config, checkpoint_step=53)
  [run] = sweep.plan(CONFIG, ["parallel"], [0], str(tmp_path), {"parallel": 400},
                     overrides=("train.num_steps=400",))
  assert not run.finished and run.argv[-1] == "--mode=evaluate"
  _fake_eval(workdir, 20.0, 1.0, config=record.config, checkpoint_step=400)
  assert run.finished
  # A kept eval.json copied into a workdir of its own counts as it says.
  _fake_eval(tmp_path / "kept", 20.0, 1.0, config=record.config)
  assert sweep.unfinished(str(tmp_path / "kept")) is None


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


def test_compare_and_the_sweeps_table_refuse_runs_of_different_worlds(tmp_path, capsys):
  """Runs made on other data (data.source, or an option such as the occluder) are neither
  averaged as seeds nor put in one table; a run whose eval.json records no config is left out."""
  bouncing, mnist, occluded, unrecorded = (str(tmp_path / name) for name in
                                           ("bouncing", "mnist", "occluded", "unrecorded"))
  for workdir, variant in ((bouncing, "parallel"), (mnist, "parallel,moving_mnist"),
                           (occluded, "parallel,occluded")):
    _fake_eval(workdir, 20.0, 1.0, config=bouncing_rf.get_config(variant).to_dict())
  _fake_eval(unrecorded, 20.0, 1.0)
  for argv, other, difference in (
      ([f"a={bouncing},{mnist}"], mnist, "data.source bouncing -> moving_mnist"),
      ([f"a={bouncing}", f"b={mnist}"], mnist, "data.source bouncing -> moving_mnist"),
      ([f"a={unrecorded},{bouncing}", f"b={occluded}"], occluded,
       "data.options.occluders [] -> [[0, 11, 32, 10]]")):
    with pytest.raises(SystemExit) as stopped:
      compare.main(argv)
    assert stopped.value.code == 2
    assert capsys.readouterr().err == (
        f"error: {bouncing} and {other} were made on different data: {difference}; combine and"
        " compare runs of one world only\n")
  compare.main([f"a={unrecorded},{bouncing}"])
  assert "PSNR" in capsys.readouterr().out
  # A config that records no data (or no data.source) says nothing of its world: it was refused
  # as "data.source bouncing -> None".
  for i, config in enumerate(({"model": {"depth": 4}}, {"data": {"options": {}}})):
    no_data = str(tmp_path / f"no_data{i}")
    _fake_eval(no_data, 20.0, 1.0, config=config)
    compare.main([f"a={bouncing},{no_data}"])
    assert "PSNR" in capsys.readouterr().out

  runs = [sweep.Run("a", 0, bouncing, ()), sweep.Run("a", 1, mnist, ())]
  with pytest.raises(errors.UserError, match="were made on different data"):
    sweep.write_table(runs, ["a"], str(tmp_path), "python -m videoar.sweep")
  assert not (tmp_path / "sweep.md").exists()


def test_local_runs_each_command_and_names_the_failed_ones(tmp_path, capsys):
  """A failed run is named; one that refused its input (exit 2, videoar.main's one line) with
  that line, which was only in its log, and not as a run the same command resumes."""
  refused = ("import sys; print('error: config.data.path=\\'x\\' does not exist',"
             " file=sys.stderr); sys.exit(2)")
  runs = [sweep.Run("a", 0, str(tmp_path / "a" / "seed0"), _script("print('trained')")),
          sweep.Run("a", 1, str(tmp_path / "a" / "seed1"), _script("import sys; sys.exit(3)")),
          sweep.Run("a", 2, str(tmp_path / "a" / "seed2"), _script(refused))]
  failures = sweep.run_local(runs)
  assert failures == [
      f"a seed 1 exited 3 (see {tmp_path}/a/seed1.log)",
      f"a seed 2 was refused: config.data.path='x' does not exist (output in"
      f" {tmp_path}/a/seed2.log); the same command is refused again until that is changed"]
  assert (tmp_path / "a" / "seed0.log").read_text() == "trained\n"
  # Run again (a resumed sweep), the log keeps the earlier attempt's output.
  sweep.run_local(runs[:1])
  assert (tmp_path / "a" / "seed0.log").read_text() == "trained\ntrained\n"


def test_a_hang_up_stops_the_local_run_as_a_preemption_and_starts_no_other(tmp_path):
  """SIGHUP (the terminal closed) reaches the run as SIGTERM, so that it saves its step; the
  sweep waits for it to exit, then stops naming it, and the next run never starts."""
  # Stands in for videoar.main: says it is training, then exits 0 on SIGTERM, as it does.
  child = ("import signal, sys, time\n"
           "signal.signal(signal.SIGTERM, lambda *_: (print('saved on', 'SIGTERM'), sys.exit(0)))\n"
           "print('training', flush=True)\n"
           "time.sleep(60)\n"
           "sys.exit(3)")
  runs = [sweep.Run("a", 0, str(tmp_path / "a" / "seed0"), _script(child)),
          sweep.Run("a", 1, str(tmp_path / "a" / "seed1"), _script("print('started')"))]
  log = tmp_path / "a" / "seed0.log"

  def hang_up_once_training():
    while not (log.exists() and "training" in log.read_text()):
      time.sleep(0.02)
    os.kill(os.getpid(), signal.SIGHUP)

  # Were SIGHUP not forwarded, it would end pytest itself: here it is caught and the run ends on
  # its own after 60 s, failing the test.
  previous = signal.signal(signal.SIGHUP, lambda *_: None)
  try:
    threading.Thread(target=hang_up_once_training, daemon=True).start()
    with pytest.raises(sweep.Stopped) as stopped:
      sweep.run_local(runs)
  finally:
    signal.signal(signal.SIGHUP, previous)
  assert stopped.value.signal == signal.SIGHUP
  assert str(stopped.value) == (
      f"hung up: a seed 0 stopped before its first checkpoint (output in {log}); the same"
      " command resumes the sweep")
  assert log.read_text() == "training\nsaved on SIGTERM\n"
  assert not (tmp_path / "a" / "seed1.log").exists()


def _kill_left_run(workdir):
  """SIGKILLs a run that still holds `workdir`'s lock (one a stopped sweep left training), so
  that a failing test leaves no process behind."""
  try:
    with workdir_lib.WorkdirLock(str(workdir)):
      return
  except workdir_lib.WorkdirBusy:
    os.kill(json.loads((workdir / ".lock").read_text())["pid"], signal.SIGKILL)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_to_a_local_sweep_lets_its_run_save_then_stops_in_one_line(tmp_path, signum,
                                                                            sigint_at_default):
  """SIGTERM to the sweep's pid alone (a scheduler's preemption), or SIGINT to its process group
  (Ctrl-C at the terminal): the run it waits for gets it once, saves its step and exits, then the
  sweep stops in one line, no traceback, and no run is left training in the workdir."""
  workdir = tmp_path / "parallel" / "seed0"
  command = [sys.executable, "-m", "videoar.sweep", f"--config={CONFIG}", "--arms=parallel",
             f"--root={tmp_path}", "--variant=test", "--set=train.num_steps=100000",
             "--set=train.checkpoint_every=100000", "--set=train.log_every=1"]
  process = subprocess.Popen(command, cwd=ROOT_DIR, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
  try:
    deadline = time.monotonic() + 240
    while not (workdir / "metrics.jsonl").exists() or "step" not in (
        workdir / "metrics.jsonl").read_text():
      assert process.poll() is None, process.communicate()[1][-2000:]
      assert time.monotonic() < deadline
      time.sleep(0.05)
    if signum == signal.SIGINT:
      os.killpg(process.pid, signum)  # what the terminal does: the foreground process group
    else:
      process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=180)
  finally:
    if process.poll() is None:
      process.kill()
    _kill_left_run(workdir)
  (saved,) = os.listdir(workdir / "checkpoints")
  line = (f"parallel seed 0 stopped with its newest checkpoint at step {saved} (output in"
          f" {workdir}.log); the same command resumes the sweep")
  if signum == signal.SIGTERM:
    assert process.returncode == 0, stderr[-2000:]
    assert stdout.strip().splitlines()[-1] == f"preempted: {line}"
  else:
    assert process.returncode == 130, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == f"interrupted by SIGINT: {line}"
  assert "Traceback" not in stderr
  # The run saved its step itself (one signal: a second SIGINT would have stopped it at once).
  words = "preempted" if signum == signal.SIGTERM else "interrupted by SIGINT"
  assert f"{words}: saved step {saved}; the same command resumes from it" in (
      tmp_path / "parallel" / "seed0.log").read_text()


def test_submitit_local_runs_the_commands_as_jobs(tmp_path):
  write = "import os, sys; os.makedirs(sys.argv[1], exist_ok=True); open(sys.argv[1] + '/eval.json', 'w')"
  runs = [sweep.Run("a", seed, str(tmp_path / "a" / f"seed{seed}"),
                    _script(write) + (str(tmp_path / "a" / f"seed{seed}"),)) for seed in (0, 1)]
  runs.append(sweep.Run("b", 0, str(tmp_path / "b"), _script("import sys; sys.exit(5)")))
  failures = sweep.run_submitit(runs, str(tmp_path / "submitit"), "local", {"timeout_min": 2})
  assert all(os.path.exists(os.path.join(r.workdir, "eval.json")) for r in runs[:2])
  assert len(failures) == 1 and failures[0].startswith("b seed 0, job ")


@pytest.mark.parametrize("flags, message", [
    (["--arms=parallel,nope"], "--arms=nope: config variant 'nope' is unknown"),
    (["--arms=parallel,parallel"], "must name distinct variants"),
    (["--arms=parallel", "--seeds=0,x"], "--seeds='0,x' must be comma-separated integers"),
    (["--arms=parallel", "--set=train.num_steps"], "--set='train.num_steps' is not KEY=VALUE"),
    (["--arms=parallel", "--slurm=timeout_min=5"], "--slurm and --cluster are submitit's"),
    (["--arms=parallel", "--set=model.widht=3"],
     "--set=model.widht=3: the config of arm parallel has no such key"),
    (["--arms=parallel", "--set=model.width=abc"],
     "--set=model.width=abc: 'abc' is not an integer"),
    (["--arms=parallel", "--set=sample.guidance_interval=(0.7,0.2)"],
     "arm parallel: config.sample.guidance_interval=(0.7, 0.2) is invalid"),
    (["--arms=parallel", "--set=model.patch=5"],  # only the world's frames refuse it
     "arm parallel: config.model.patch=5 is invalid: must divide the frame size 32x32"),
    (["--arms=parallel", "--variant=nope"], "--variant=nope: config variant 'nope' is unknown"),
    (["--arms=parallel", "--variant=occluded,moving_mnist"],
     "--variant=occluded,moving_mnist: config variants occluded and moving_mnist are two worlds"),
    (["--arms=parallel,moving_mnist"],  # one table would compare worlds, not arms
     "--arms=parallel,moving_mnist: arms parallel and moving_mnist train on different data:"
     " data.source bouncing -> moving_mnist; sweep one world at a time"),
])
def test_bad_flags_stop_with_one_line(tmp_path, capsys, flags, message):
  with pytest.raises(SystemExit) as stopped:
    sweep.main([f"--config={CONFIG}", f"--root={tmp_path}", *flags])
  assert stopped.value.code == 2
  err = capsys.readouterr().err
  assert message in err and err.startswith("error: ") and err.count("\n") == 1, err
  assert not list(tmp_path.iterdir())


def test_a_repeated_seed_stops_with_one_line(tmp_path, capsys):
  """Guards against accepting --seeds that repeat a seed: two runs of one arm would share a
  workdir (and count twice in the mean), so --seeds=0,0 exits 2 naming the repeat. The print
  executor keeps the test fast where the flag is let through: nothing trains."""
  with pytest.raises(SystemExit) as stopped:
    sweep.main([f"--config={CONFIG}", f"--root={tmp_path}", "--arms=parallel", "--seeds=0,0",
                "--executor=print"])
  assert stopped.value.code == 2
  err = capsys.readouterr().err
  assert err == "error: --seeds='0,0' repeats a seed\n", err
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


def _sweep(*flags):
  """python -m videoar.sweep FLAGS, run from the repository's root."""
  return subprocess.run([sys.executable, "-m", "videoar.sweep", *flags], cwd=ROOT_DIR,
                        capture_output=True, text=True)


def _one_line(result):
  """The one line a refused sweep printed, after checking that it was refused (exit 2)."""
  assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr[-2000:]
  return result.stderr.rstrip("\n")


@pytest.mark.parametrize("root, line", [
    ("", "error: --root is empty: name the sweep's directory"),
    ("{tmp}/r[1]", "error: --root={tmp}/r[1]: '[' and ']' in the path are not supported"
     " (checkpoint paths are read as glob patterns); rename it"),
    pytest.param("/proc/sweep",
                 "error: --root=/proc/sweep: cannot create it: No such file or directory",
                 marks=pytest.mark.skipif(not os.path.isdir("/proc"), reason="no /proc")),
], ids=["empty", "brackets", "unwritable"])
def test_a_root_that_main_would_refuse_as_the_runs_parent_stops_with_one_line(tmp_path, root,
                                                                              line):
  """As videoar.main refuses such a --workdir: an empty root put the runs and sweep.md in the
  current directory; under brackets every run failed alone and the sweep said that the same
  command resumes them; an unwritable one was a traceback."""
  result = _sweep("--config=configs/bouncing_tiny.py", "--arms=test", "--executor=print",
                  f"--root={root.format(tmp=tmp_path)}")
  assert _one_line(result) == line.format(tmp=tmp_path)
  assert not result.stdout and not list(tmp_path.iterdir())


@pytest.mark.parametrize("flags, line", [
    (["--cluster=bogus"],  # argparse's words, and each cluster quoted by Python 3.11's only
     "error: argument --cluster: invalid choice: 'bogus' (choose from {slurm}, {local},"
     " {debug})"),
    (["--slurm=bogus_param=3"],
     "error: --slurm=bogus_param=3: Unknown executor 'bogus' in parameter 'bogus_param'"
     " (submitit's parameters: name, timeout_min, mem_gb, nodes, cpus_per_task, gpus_per_node,"
     " tasks_per_node, stderr_to_stdout, or CLUSTER_KEY for one cluster's own, e.g."
     " slurm_partition)"),
    (["--cluster=local", "--slurm=nodes=2"],
     "error: --slurm=nodes=2: LocalExecutor can use only one node. Use nodes=1"),
    pytest.param(["--cluster=slurm"],
                 "error: --cluster=slurm: Could not detect \"srun\", are you indeed on a slurm"
                 " cluster?", marks=pytest.mark.skipif(bool(shutil.which("srun")),
                                                       reason="a SLURM host")),
], ids=["unknown cluster", "unknown parameter", "a value the cluster refuses", "no SLURM here"])
def test_a_cluster_or_parameter_submitit_refuses_stops_with_one_line_before_anything_is_made(
    tmp_path, flags, line):
  """Were a traceback: the cluster's once the runs were planned, a parameter's once submitit had
  made ROOT/submitit."""
  result = _sweep("--config=configs/bouncing_tiny.py", "--arms=test", f"--root={tmp_path}/sweep",
                  "--executor=submitit", *flags)
  assert _one_line(result) in {line.format(**{c: f"'{c}'" for c in sweep.CLUSTERS}),
                               line.format(**{c: c for c in sweep.CLUSTERS})}
  assert not list(tmp_path.iterdir())


def test_a_fractional_slurm_parameter_reaches_submitit_as_a_number():
  # mem_gb=3.5 was passed as the text "3.5", which submitit refuses.
  parser = errors.ArgumentParser(prog="sweep")
  parameters = sweep._slurm_parameters(parser, ["mem_gb=3.5", "timeout_min=120",
                                                "slurm_partition=gpu"])
  assert parameters == {"mem_gb": 3.5, "timeout_min": 120, "slurm_partition": "gpu"}
  sweep._check_submitit(parser, "local", {"mem_gb": 3.5, "timeout_min": 120})


# (what the config file holds, the line videoar.main prints for it); the file is written to {f}
BAD_CONFIG_FILES = [
    ("def get_config(variant=''):\n  return base_config.get_config()\n",
     "error: --config: {f}: NameError: name 'base_config' is not defined"),
    ("import videoar.no_such_module\n",
     "error: --config: {f}: ModuleNotFoundError: No module named 'videoar.no_such_module'"
     " (a config file's own folder is not on the import path: import a module of this"
     " repository by its package, e.g. from configs import bouncing_tiny, from the"
     " repository's root)"),
    ("def get_config(variant=''):\n  return {'seed': 0}\n",
     "error: --config: get_config() returned a dict; it must return an ml_collections.ConfigDict"
     " (e.g. base_config.get_config())"),
]


@pytest.mark.parametrize("text, line", BAD_CONFIG_FILES,
                         ids=["a NameError", "an ImportError", "a dict"])
def test_a_config_file_that_cannot_give_a_config_is_mains_one_line(tmp_path, text, line):
  config_file = tmp_path / "my_config.py"
  config_file.write_text(text)
  result = _sweep(f"--config={config_file}", "--arms=a", f"--root={tmp_path}/sweep",
                  "--executor=print")
  assert _one_line(result) == line.format(f=config_file)
  assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("module, variant, message", [
    (bouncing_rf, "parallel,noise_augmentation",
     "config variants parallel and noise_augmentation are two forcing arms; name one"),
    (bouncing_rf, "teacher_forcing,autoregressive,test",
     "config variants teacher_forcing and autoregressive are two forcing arms; name one"),
    (bouncing_sf, "teacher,ode", "config variants teacher and ode are two stages; name one"),
    (bouncing_sf, "world,test",
     "config variant 'world' is of the ODE stage ('ode,world'), not of 'self_forcing'"),
    (bouncing_sf, "teacher,world",
     "config variant 'world' is of the ODE stage ('ode,world'), not of 'teacher'"),
])
def test_variants_that_set_the_same_knob_are_refused_not_one_silently_dropped(module, variant,
                                                                               message):
  with pytest.raises(ValueError) as refused:
    module.get_config(variant)
  assert str(refused.value) == message


def test_the_window_holds_in_whichever_order_it_and_teacher_forcing_are_named():
  """teacher_forcing reset the forcing keys where it came after window: the window was lost."""
  config = bouncing_rf.get_config("window,teacher_forcing")
  assert config.to_dict() == bouncing_rf.get_config("teacher_forcing,window").to_dict()
  assert config.forcing.history_window == bouncing_rf.get_config("window").forcing.history_window
  assert config.forcing.paradigm == bouncing_rf.get_config("teacher_forcing").forcing.paradigm


@pytest.mark.parametrize("flags, line", [
    (["--arms=parallel,autoregressive", "--variant=noise_augmentation,test"],
     "error: --arms=parallel: config variants parallel and noise_augmentation are two forcing"
     " arms; name one"),
    (["--arms=autoregressive,test", "--variant=test"],  # autoregressive is the config's default
     "error: --arms=autoregressive,test: arms autoregressive and test give the same config with"
     " --variant=test: one recipe under two names; name one of them"),
], ids=["a variant that overrides the arm", "two arms of one config"])
def test_arms_that_would_train_one_recipe_under_two_names_stop_with_one_line(tmp_path, flags,
                                                                             line):
  result = _sweep(f"--config={CONFIG}", f"--root={tmp_path}/sweep", "--executor=print", *flags)
  assert _one_line(result) == line
  assert not result.stdout and not list(tmp_path.iterdir())


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
  assert set(table) == {"teacher_forcing", "teacher_forcing sd", "teacher_forcing n", "parallel",
                        "parallel sd", "parallel n", "copy_last", "background"}
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
  [run] = sweep.plan(CONFIG, ["parallel"], [1], str(tmp_path), {"parallel": 1})
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


def test_the_rf_experiment_script_is_one_sweep_of_its_arms_and_seeds(tmp_path):
  # It ran videoar.main per arm and skipped any workdir with an eval.json, tabling an evaluation
  # of other STEPS; the sweep refuses that (test_sweep_trains_evaluates_and_resumes_end_to_end).
  result = subprocess.run(
      ["bash", "launch/bouncing_rf_experiment.sh"], capture_output=True, text=True, timeout=60,
      cwd=ROOT_DIR, env=dict(os.environ, PYTHON="echo", STEPS="7", SEEDS="0 1",
                             ARMS="parallel test", OUT=str(tmp_path)))
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == [
      "-m", "videoar.sweep", "--config=configs/bouncing_rf.py", "--arms=parallel,test",
      "--seeds=0,1", f"--root={tmp_path}", "--set=train.num_steps=7"]
