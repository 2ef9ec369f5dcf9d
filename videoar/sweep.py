"""Arms x seeds of one config in one command: train, evaluate, and one table of mean and spread.

  python -m videoar.sweep --config=configs/bouncing_rf.py \
      --arms=teacher_forcing,noise_augmentation,parallel,autoregressive --seeds=0,1,2 \
      --root=runs/sweep_rf [--variant=occluded] [--set=train.num_steps=600 ...] \
      [--executor=local|submitit|print] [--cluster=slurm|local] [--slurm=timeout_min=120 ...]

Each arm is a variant of the config (`CONFIG:ARM`, plus `--variant` shared by every arm), each
arm x seed one command line,

  python -m videoar.main --config=CONFIG:ARM[,VARIANT] --workdir=ROOT/ARM/seedS --config.seed=S
      [--config.KEY=VALUE for each --set]

which the executor runs: `local` one after another on this machine (each one's output appended
to ROOT/ARM/seedS.log), `submitit` as jobs of submitit's AutoExecutor (SLURM where there is one;
`--cluster=local` runs them as local processes; `--slurm KEY=VALUE` are its parameters, e.g.
timeout_min, slurm_partition, gpus_per_node; its logs in ROOT/submitit/), or `print`, which only
prints them, for a launcher of its own (a TPU pod's). There is no scheduler here.

Resumable: an arm x seed whose workdir holds an eval.json of its train.num_steps is finished and
not run again (an evaluation of a run stopped early, `--mode=evaluate` at step 53 of 400, is
not: see `unfinished`); one whose training finished but whose evaluation did not (a job stopped
during it) runs `--mode=evaluate`; any other resumes training from its newest checkpoint
(videoar.main). A workdir whose eval.json (or, unfinished, whose run.json) records other values
than the arm's command now gives (another --set, a changed config file) stops the sweep before
anything runs, in one line naming the workdir and the values, rather than passing an old result
off as the new command's. Once every arm x seed is finished, the sweep writes ROOT/sweep.md and
ROOT/sweep.json: per metric and segment, each arm's mean over the seeds and standard deviation
(videoar.eval.compare.combine, the same figures as `python -m videoar.eval.compare`), with the
baselines of the first run, under the command that made them. Arms on different data (a variant
that names a world) are refused before anything runs. After `print`, or when a run failed, the
same command again writes the table once all have finished.

Stopping a local sweep: SIGTERM, SIGINT (Ctrl-C) or SIGHUP (its terminal closed) goes on to the
run it is waiting for (SIGHUP as SIGTERM), which saves its step and exits; the sweep then stops
with one line naming the run and its newest checkpoint, `preempted: ...` on stdout for SIGTERM,
`interrupted by SIGINT: ...` or `hung up: ...` on stderr for the others. The same command resumes
the sweep.

Exit status: 0 when the table is written (or, with `print`, the commands printed) and after a
SIGTERM (a planned stop); 1 when a run failed or is unfinished (each named); 2 for bad flags, a
config file that gives no config, a config variant the config does not have (or two that set the
same knob), a --set key or value it rejects, arms on different data or of the same config, a
--root that videoar.main would refuse as a workdir's parent (empty, '[' or ']', not writable), a
--cluster or --slurm parameter submitit refuses, or a workdir that holds other values; 128 + the
signal after a SIGINT (130) or SIGHUP (129). Each is one line before anything is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time

from absl import flags
import ml_collections
from ml_collections import config_flags

from videoar import errors, experiment, files, validate
from videoar.data import pipeline
from videoar.eval import compare
from videoar.train import checkpoint as checkpoint_lib
from videoar.train import workdir as workdir_lib

EXECUTORS = ("local", "submitit", "print")
# submitit.AutoExecutor's clusters, named here so that --cluster is checked without submitit.
CLUSTERS = ("slurm", "local", "debug")
# What a config file's own code raises while it loads or builds its config, reported in one line
# as videoar.main reports it (errors.parse_flags); anything else is a bug and keeps its traceback.
CONFIG_FILE_ERRORS = (AttributeError, ImportError, KeyError, NameError)


@dataclasses.dataclass(frozen=True)
class Run:
  """One arm x seed: its workdir and the command line that trains and evaluates it there."""

  arm: str
  seed: int
  workdir: str
  argv: tuple[str, ...]

  @property
  def finished(self) -> bool:
    """Whether the run is trained to its train.num_steps and evaluated there (`unfinished`)."""
    return unfinished(self.workdir) is None


def _variants(arm: str, variant: str) -> str:
  """The config variants of an arm's runs: the arm's, then the one every arm shares."""
  return ",".join(v for v in (arm, variant) if v)


def trained(workdir: str, num_steps: int) -> bool:
  """Whether the run in `workdir` reached `num_steps` (the train.num_steps of the command about
  to run it, not its run.json's: a sweep rerun with more steps trains on): a run recorded there
  with a finished checkpoint at or past it."""
  record = workdir_lib.RunRecord.load(workdir)
  steps = checkpoint_lib.finished_steps(os.path.join(workdir, "checkpoints"))
  return bool(record and steps and steps[-1] >= num_steps)


def _result_config(workdir: str) -> dict | None:
  """The config of the result in `workdir`: its eval.json's, else (an eval.json older than the
  config it records) its run.json's; None when neither records one. Raises errors.UserError for
  an eval.json or run.json that cannot be read."""
  recorded = compare.recorded_config(workdir)
  if recorded is None:
    record = workdir_lib.RunRecord.load(workdir)
    recorded = record.config if record else None
  return recorded


def unfinished(workdir: str) -> str | None:
  """Why the run in `workdir` is not finished, in a few words, or None when it is: an eval.json
  of the step train.num_steps (its config's, `_result_config`). The step is the one the eval.json
  records having evaluated (checkpoint_step) where it records one, else the newest finished
  checkpoint's, which an evaluation reads: `--mode=evaluate` of a run stopped early writes an
  eval.json too, of a model that is not the command's. A workdir without checkpoints (a kept
  eval.json copied in, or checkpoints deleted to free the disk) is taken at its eval.json's word.

  Raises:
    errors.UserError: its eval.json or run.json cannot be read.
  """
  if not os.path.exists(compare.eval_json_path(workdir)):
    return f"no {compare.eval_json_path(workdir)}"
  step = compare.evaluated_step(workdir)
  if step is None:
    steps = checkpoint_lib.finished_steps(os.path.join(workdir, "checkpoints"))
    step = steps[-1] if steps else None
  config = _result_config(workdir)
  num_steps = config.get("train", {}).get("num_steps") if config else None
  if step is None or num_steps is None or step == num_steps:
    return None
  return (f"{compare.eval_json_path(workdir)} is of step {step}, not train.num_steps={num_steps}"
          " (evaluated before its training finished)")


def plan(config: str, arms: list[str], seeds: list[int], root: str, num_steps: dict[str, int],
         variant: str = "", overrides: tuple[str, ...] = (),
         python: str = sys.executable) -> list[Run]:
  """The runs of the sweep, arm by arm, seed by seed, each with videoar.main's command line: a
  run trained to its arm's num_steps is evaluated (`--mode=evaluate`), any other trained on.

  Args:
    config: a config file (configs/NAME.py) whose variants the arms are.
    arms: variant names, one per arm; `variant`, if given, is added to every arm's.
    seeds: config.seed of each run.
    root: the runs' workdirs are ROOT/ARM/seedS.
    num_steps: each arm's train.num_steps, overrides included (`_check_arms`' configs).
    overrides: KEY=VALUE, given to every run as --config.KEY=VALUE.
    python: the interpreter the commands name.
  """
  runs = []
  for arm in arms:
    variants = _variants(arm, variant)
    for seed in seeds:
      workdir = os.path.join(root, arm, f"seed{seed}")
      argv = (python, "-m", "videoar.main", f"--config={config}:{variants}",
              f"--workdir={workdir}", f"--config.seed={seed}",
              *(f"--config.{override}" for override in overrides))
      if trained(workdir, num_steps[arm]):
        argv += ("--mode=evaluate",)
      runs.append(Run(arm, seed, workdir, argv))
  return runs


class Stopped(Exception):
  """A local sweep stopped by a signal once the run it was waiting for had exited: `signal` is
  the signal the sweep received; the message is the line to show."""

  def __init__(self, signum: signal.Signals, line: str):
    super().__init__(line)
    self.signal = signum


# The signals a local sweep passes on to its run, and as what: a hang-up (the terminal closed)
# stops it as a preemption does, saving its step, where it would otherwise die without a save.
_FORWARDED = {signal.SIGTERM: signal.SIGTERM, signal.SIGINT: signal.SIGINT,
              signal.SIGHUP: signal.SIGTERM}
_STOP_WORDS = {signal.SIGTERM: "preempted", signal.SIGINT: "interrupted by SIGINT",
               signal.SIGHUP: "hung up"}


class _Forwarder:
  """While a local sweep runs its commands: each signal of _FORWARDED that the sweep receives
  goes on to the command running (one received while it started, once it has); `received` is
  the first. A signal the sweep was started ignoring (nohup's SIGHUP, a background job's SIGINT)
  stays ignored.

  Each command runs in a process group of its own, so that a Ctrl-C at the terminal, which goes
  to the sweep's group, reaches it once, forwarded, not twice: a second SIGINT stops videoar.main
  at once, without the save the first one asked for.
  """

  def __init__(self):
    self.received: signal.Signals | None = None
    self._child: subprocess.Popen | None = None
    self._pending: signal.Signals | None = None
    self._previous = {}

  def __enter__(self) -> _Forwarder:
    for signum in _FORWARDED:
      if signal.getsignal(signum) is not signal.SIG_IGN:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc_info) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)

  def _handle(self, signum, frame) -> None:
    del frame
    self.received = self.received or signal.Signals(signum)
    if self._child is None:
      self._pending = signal.Signals(signum)
    else:
      self._child.send_signal(_FORWARDED[signum])

  def run(self, argv: tuple[str, ...], log: str) -> int:
    """Runs `argv` to its end, its output appended to `log` (an earlier attempt's is kept);
    returns its exit status."""
    with open(log, "a") as f:
      # stdin: a process group other than the terminal's that read from it would be stopped.
      child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f,
                               stderr=subprocess.STDOUT, process_group=0)
    self._child = child
    pending, self._pending = self._pending, None
    if pending:
      child.send_signal(_FORWARDED[pending])
    try:
      # In polls, not one blocking wait: a signal that lands on another of the sweep's threads
      # (JAX starts some) runs its handler only once the main thread runs Python again.
      while True:
        try:
          return child.wait(timeout=60)
        except subprocess.TimeoutExpired:
          pass
    finally:
      self._child = None


def run_local(runs: list[Run]) -> list[str]:
  """Runs each command here, one after another, its output appended to WORKDIR.log; returns a
  line per failed run.

  Raises:
    Stopped: the sweep received SIGTERM, SIGINT or SIGHUP; the run it was waiting for got it
      too (_Forwarder) and has exited, and no other run was started.
  """
  failures = []
  with _Forwarder() as forwarder:
    for index, run in enumerate(runs):
      log = run.workdir + ".log"
      os.makedirs(os.path.dirname(log), exist_ok=True)
      print(f"[{index + 1}/{len(runs)}] {run.arm} seed {run.seed}: {shlex.join(run.argv)}",
            flush=True)
      started = time.perf_counter()
      status = forwarder.run(run.argv, log)
      if forwarder.received:
        steps = checkpoint_lib.finished_steps(os.path.join(run.workdir, "checkpoints"))
        where = (f"stopped with its newest checkpoint at step {steps[-1]}" if steps else
                 "stopped before its first checkpoint")
        raise Stopped(forwarder.received,
                      f"{_STOP_WORDS[forwarder.received]}: {run.arm} seed {run.seed} {where}"
                      f" (output in {log}); the same command resumes the sweep")
      print(f"  {'finished' if status == 0 else f'failed (exit {status})'} in"
            f" {time.perf_counter() - started:.0f} s; output in {log}", flush=True)
      if status == 2:  # videoar.main refused its input in one line (errors.exit_with_error)
        failures.append(f"{run.arm} seed {run.seed} was refused: {_last_error(log)} (output in"
                        f" {log}); the same command is refused again until that is changed")
      elif status:
        failures.append(f"{run.arm} seed {run.seed} exited {status} (see {log})")
  return failures


def _last_error(log: str) -> str:
  """The last `error: ...` line of a run's log, without its prefix, or what stands in for it."""
  with open(log, errors="replace") as f:
    lines = [line.strip() for line in f if line.startswith("error: ")]
  return lines[-1][len("error: "):] if lines else "no error line in its output"


def run_submitit(runs: list[Run], folder: str, cluster: str | None,
                 parameters: dict) -> list[str]:
  """Submits each command as a job of submitit.AutoExecutor (`cluster`: None picks SLURM where
  there is one; "local" runs local processes) with `parameters`, waits for all; returns a line
  per failed job."""
  import submitit  # only this executor needs it (the `slurm` extra)

  executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
  executor.update_parameters(**parameters)
  jobs = [executor.submit(submitit.helpers.CommandFunction(list(run.argv), verbose=False))
          for run in runs]
  for run, job in zip(runs, jobs):
    print(f"submitted {run.arm} seed {run.seed} as job {job.job_id}", flush=True)
  failures = []
  for run, job in zip(runs, jobs):
    try:
      job.result()
    except Exception as e:  # the job's own failure (FailedJobError, its stderr) or a lost job
      last = str(e).strip().splitlines()
      failures.append(f"{run.arm} seed {run.seed}, job {job.job_id}: {type(e).__name__}"
                      f" {last[-1] if last else ''} (logs in {folder})")
  return failures


def _check_submitit(parser: argparse.ArgumentParser, cluster: str | None,
                   parameters: dict) -> None:
  """Makes submitit's executor for `cluster` in a scratch folder and gives it the --slurm
  `parameters` one by one, so that a cluster it cannot reach here or a parameter it refuses is
  one line naming the flag before anything is made: the executor makes its folder, ROOT/submitit,
  before it reads a parameter."""
  try:
    import submitit  # only this executor needs it (the `slurm` extra)
  except ImportError:
    parser.error("--executor=submitit needs submitit: pip install 'videoar[slurm]'")
  with tempfile.TemporaryDirectory() as scratch:
    try:
      executor = submitit.AutoExecutor(folder=scratch, cluster=cluster)
    except RuntimeError as e:  # --cluster=slurm where SLURM's commands are not found
      parser.error(f"--cluster={cluster}: {e}")
    for key, value in parameters.items():
      try:
        executor.update_parameters(**{key: value})
      except (AssertionError, NameError, TypeError, ValueError) as e:
        line = f"--slurm={key}={value}: {str(e).splitlines()[0].rstrip('.')}"
        if isinstance(e, NameError):  # a name it does not know: its other lines list them as types
          shared = ", ".join(submitit.AutoExecutor._typed_parameters())
          line += (f" (submitit's parameters: {shared}, or CLUSTER_KEY for one cluster's own, e.g."
                   " slurm_partition)")
        parser.error(line)


def write_table(runs: list[Run], arms: list[str], root: str, command: str) -> str:
  """Writes ROOT/sweep.md and ROOT/sweep.json (compare.combine over each arm's seeds, under
  `command`); returns the Markdown. Raises errors.UserError naming a run's eval.json that is not
  an evaluation's (compare.combine)."""
  combined = compare.combine({arm: [run.workdir for run in runs if run.arm == arm]
                              for arm in arms})
  seeds = sorted({run.seed for run in runs})
  text = (f"```bash\n{command}\n```\n\nMean ± standard deviation over seeds"
          f" {', '.join(map(str, seeds))} (n - 1); baselines from the first run.\n\n"
          + compare.markdown(combined))
  with open(os.path.join(root, "sweep.md"), "w") as f:
    f.write(text)
  with open(os.path.join(root, "sweep.json"), "w") as f:
    json.dump(dict(command=command, arms=arms, seeds=seeds,
                   workdirs={run.workdir: run.arm for run in runs}, tables=combined),
              f, indent=1)
  return text


def _check_arms(parser: argparse.ArgumentParser, config: str, arms: list[str], variant: str,
                overrides: dict) -> dict[str, dict]:
  """Loads CONFIG once per arm with the --set overrides, parsed as videoar.main parses them, and
  validates it (videoar.validate; and builds it, videoar.experiment.build, when its data is a
  procedural world), so that an unknown variant, a --set key the config lacks or a value it or
  its frames cannot take fails here in one line, not in every run of the sweep. Returns each arm's
  config as a dict (its seed the config's own)."""
  if not os.path.isfile(config):
    parser.error(f"--config={config}: no such file")
  spec = importlib.util.spec_from_file_location("sweep_config", config)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except SyntaxError as e:
    parser.error(errors.syntax_error_line(e))
  except CONFIG_FILE_ERRORS as e:
    parser.error(errors.config_file_error(["sweep", f"--config={config}"], e))
  if not callable(getattr(module, "get_config", None)):
    parser.error(f"--config={config}: the file defines no get_config(variant='')")

  def get_config(variants: str, flag: str) -> ml_collections.ConfigDict:
    """The config file's config of `variants`; a variant it refuses is one line naming `flag`."""
    try:
      built = module.get_config(variants)
    except ValueError as e:
      parser.error(f"{flag}: {e}")
    except CONFIG_FILE_ERRORS as e:
      parser.error(errors.config_file_error(["sweep", f"--config={config}"], e))
    if not isinstance(built, ml_collections.ConfigDict):
      parser.error(f"--config: get_config() returned a {type(built).__name__}; it must return an"
                   " ml_collections.ConfigDict (e.g. base_config.get_config())")
    return built

  configs = {}
  if variant:
    get_config(variant, f"--variant={variant}")
  for arm in arms:
    arm_config = get_config(_variants(arm, variant), f"--arms={arm}")
    for key, value in overrides.items():
      node = arm_config
      parts = key.split(".")
      for depth, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
          close = (difflib.get_close_matches(part, list(node.keys()), n=1)
                   if isinstance(node, ml_collections.ConfigDict) else [])
          hint = (f"; did you mean {'.'.join(parts[:depth] + close)}?" if close else "")
          parser.error(f"--set={key}={value}: the config of arm {arm} has no such key{hint} (every"
                       " key is in videoar/base_config.py)")
        node = node[part]
    argv = ["sweep", f"--config={config}:{_variants(arm, variant)}",
            *(f"--config.{key}={value}" for key, value in overrides.items())]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values,
                                    lock_config=True, sys_argv=argv)
    try:
      flag_values(argv)
      validate.validate(flag_values.config)
      # A procedural world costs milliseconds to build, so what only its frames refuse (a patch
      # that does not divide them) fails here too; a recording is left to the runs, as opening
      # one can mean generating it.
      if flag_values.config.data.source in pipeline.PROCEDURAL_SOURCES:
        experiment.build(flag_values.config)
    except flags.Error as e:  # a value of the wrong type: "flag --config.KEY=VALUE: why"
      parser.error(errors.flag_error_line(e).replace("flag --config.", "--set=", 1))
    except errors.ConfigError as e:
      parser.error(f"arm {arm}: {e}")
    configs[arm] = flag_values.config.to_dict()
  return configs


def recorded_differently(run: Run, config: dict) -> str | None:
  """The line saying that `run`'s workdir holds a result or a run of other values than `config`
  (its arm's, as a dict) at its seed, or None. A finished run is compared through its
  eval.json's config (its run.json's where an older eval.json has none): any value that changes
  what it computes, sampling and evaluation included, makes its result another command's. An
  unfinished one is compared through its run.json as videoar.main would resume it
  (workdir.compare's blocking differences).

  Raises:
    errors.UserError: the eval.json or run.json cannot be read.
  """
  config = dict(config, seed=run.seed)
  record = workdir_lib.RunRecord.load(run.workdir)
  if run.finished:
    recorded = _result_config(run.workdir)
    differences = workdir_lib.result_differences(recorded, config) if recorded else ()
    what = "the results"
  elif record is not None:
    current = workdir_lib.RunRecord(config, record.dataset)
    differences = workdir_lib.compare(record, current).blocking
    what = "a run"
  else:
    return None
  if not differences:
    return None
  return (f"{workdir_lib.other_values_line(run.workdir, what, differences)}; use a new --root,"
          " or move that workdir away to run it again")


def _check_root(parser: argparse.ArgumentParser, root: str) -> None:
  """A --root the runs' workdirs cannot be under, in one line, as videoar.main refuses such a
  --workdir: otherwise every run fails alone, or the sweep stops in a traceback."""
  problem = errors.run_directory_problem("--root", root, "the sweep's directory")
  if problem:
    parser.error(problem)
  problem = files.unwritable(root)
  if problem:
    parser.error(f"--root={root}: cannot {'write to' if os.path.isdir(root) else 'create'} it:"
                 f" {problem}")


def _key_values(parser: argparse.ArgumentParser, flag: str, items: list[str],
                convert=lambda value: int(value) if value.lstrip("-").isdigit() else value
                ) -> dict:
  pairs = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or not key:
      parser.error(f"--{flag}={item!r} is not KEY=VALUE")
    pairs[key] = convert(value)
  return pairs


def _slurm_parameters(parser: argparse.ArgumentParser, items: list[str]) -> dict:
  """The --slurm KEY=VALUE items as submitit takes them: "120" an int, "3.5" a float (mem_gb was
  refused as the text "3.5"), anything else the text."""

  def number_or_text(value: str) -> int | float | str:
    for kind in (int, float):
      try:
        return kind(value)
      except ValueError:
        pass
    return value

  return _key_values(parser, "slurm", items, number_or_text)


def main(argv: list[str] | None = None) -> int:
  parser = errors.ArgumentParser(prog="python -m videoar.sweep",
                                 description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True, help="configs/NAME.py")
  parser.add_argument("--arms", required=True, help="comma-separated variants of the config")
  parser.add_argument("--seeds", default="0", help="comma-separated config.seed values")
  parser.add_argument("--root", required=True, help="workdirs are ROOT/ARM/seedS")
  parser.add_argument("--variant", default="", help="a variant added to every arm's")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="--config.KEY=VALUE for every run (repeatable)")
  parser.add_argument("--executor", choices=EXECUTORS, default="local")
  parser.add_argument("--cluster", choices=CLUSTERS, default=None,
                      help="submitit's cluster: unset picks SLURM where there is one")
  parser.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                      help="a parameter of submitit's executor (repeatable)")
  args = parser.parse_args(argv)
  arms = [arm for arm in args.arms.split(",") if arm]
  if not arms or len(set(arms)) < len(arms):
    parser.error(f"--arms={args.arms!r} must name distinct variants")
  try:
    seeds = [int(seed) for seed in args.seeds.split(",")]
  except ValueError:
    parser.error(f"--seeds={args.seeds!r} must be comma-separated integers")
  if len(set(seeds)) < len(seeds):
    parser.error(f"--seeds={args.seeds!r} repeats a seed")
  if min(seeds) < 0 or max(seeds) >= 2**32:
    # As validate's config.seed: the data streams' seeds are unsigned 32-bit.
    parser.error(f"--seeds={args.seeds!r}: a seed is an integer in [0, 2**32)")
  overrides = _key_values(parser, "set", args.set)
  if "seed" in overrides:
    parser.error(f"--set=seed={overrides['seed']}: each run's seed comes from --seeds")
  parameters = _slurm_parameters(parser, args.slurm)
  if args.executor != "submitit" and (args.slurm or args.cluster):
    parser.error(f"--slurm and --cluster are submitit's; --executor={args.executor}")
  configs = _check_arms(parser, args.config, arms, args.variant, overrides)
  for arm in arms[1:]:  # a table of arms on different data would compare worlds, not arms
    difference = workdir_lib.data_difference(configs[arms[0]], configs[arm])
    if difference:
      parser.error(f"--arms={args.arms}: arms {arms[0]} and {arm} train on different data:"
                   f" {difference}; sweep one world at a time (--variant names it for every arm)")
  for index, arm in enumerate(arms):
    same = next((other for other in arms[:index] if configs[other] == configs[arm]), None)
    if same:  # their rows would differ by the seeds' noise alone, under two names
      parser.error(f"--arms={args.arms}: arms {same} and {arm} give the same config"
                   f"{f' with --variant={args.variant}' if args.variant else ''}: one recipe"
                   " under two names; name one of them")
  _check_root(parser, args.root)
  if args.executor == "submitit":
    _check_submitit(parser, args.cluster, parameters)

  command = shlex.join(["python", "-m", "videoar.sweep"] + list(
      sys.argv[1:] if argv is None else argv))
  runs = plan(args.config, arms, seeds, args.root,
              {arm: configs[arm]["train"]["num_steps"] for arm in arms}, args.variant,
              tuple(args.set))
  for run in runs:
    try:
      line = recorded_differently(run, configs[run.arm])
    except errors.UserError as e:
      parser.error(str(e))
    if line:
      parser.error(line)
  pending = [run for run in runs if not run.finished]
  print(f"sweep: {len(runs)} runs, {len(runs) - len(pending)} finished already"
        f" ({args.root})", flush=True)
  started = time.perf_counter()
  if args.executor == "print":
    for run in pending:
      print(shlex.join(("python",) + run.argv[1:]))
    if pending:
      print(f"sweep: printed {len(pending)} commands; once they have finished, this command"
            " writes the table", file=sys.stderr)
      return 0
    failures = []
  elif args.executor == "submitit":
    failures = run_submitit(pending, os.path.join(args.root, "submitit"), args.cluster,
                            parameters) if pending else []
  else:
    try:
      failures = run_local(pending)
    except Stopped as e:
      print(e, file=sys.stdout if e.signal == signal.SIGTERM else sys.stderr)
      # SIGTERM is a planned stop (preemption, a time limit), as in videoar.main.
      return 0 if e.signal == signal.SIGTERM else 128 + e.signal
  left = [f"{run.arm} seed {run.seed}: {unfinished(run.workdir)}" for run in runs
          if not run.finished]
  if failures or left:
    print("sweep: not every run finished; the same command resumes them (a refused one once its"
          " input is changed):", file=sys.stderr)
    for line in failures or left:
      print(f"  {line}", file=sys.stderr)
    return 1
  try:
    print(write_table(runs, arms, args.root, command))
  except errors.UserError as e:  # a run's eval.json that is not an evaluation's
    parser.error(str(e))
  print(f"sweep: {len(pending)} runs in {time.perf_counter() - started:.0f} s; table in"
        f" {os.path.join(args.root, 'sweep.md')} and sweep.json")
  return 0


if __name__ == "__main__":
  sys.exit(main())
