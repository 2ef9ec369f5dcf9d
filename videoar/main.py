"""videoar's entry point.

  python -m videoar.main --config=configs/bouncing_tiny.py --workdir=runs/tiny [--mode=all]

Modes: `train` (resumes from WORKDIR/checkpoints), `sample` (writes WORKDIR/samples/*.mp4 and a
PNG strip), `evaluate` (per-segment long-horizon table to stdout and WORKDIR/eval.json), `all`
(train, then sample, then evaluate). Any config value can be overridden on the command line, e.g.
`--config.train.num_steps=20 --config.seed=1`.

Bad input (a config key or value, a data option, data that cannot give what the config asks
for, a workdir whose checkpoints another model wrote, a workdir another run holds or that holds
another run, a workdir or $VIDEOAR_CACHE that cannot be written) stops before anything compiles
with one line, `error: ...`, and exit status 2; nothing on disk is deleted. A step that is not
finite stops the run naming it (status 2), the newest checkpoint being the last good one. A
SIGTERM saves the step it was on and exits 0 (a planned stop: preemption, a time limit); a first
Ctrl-C does the same but exits 130 after one line, `interrupted by SIGINT: ...`; a second Ctrl-C
stops at once.

With --distributed, the process joins a multi-process run (launch/*.sh) through
jax.distributed.initialize, which reads the coordinator's address, the number of processes and
this process's index from the environment: from Cloud TPU, Slurm, Open MPI or Kubernetes, or
from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID. Such a run trains only;
sample and evaluate from its checkpoints in one process.

On Linux with glibc 2.35 or later and transparent huge pages on, the command first re-executes
itself (same pid and arguments) with GLIBC_TUNABLES=glibc.malloc.hugetlb=1, which takes about 9 %
off a CPU train step (videoar/host_memory.py); a GLIBC_TUNABLES that already names
glibc.malloc.hugetlb is left as it is (GLIBC_TUNABLES=glibc.malloc.hugetlb=0 runs without).
Once the config is checked, the job prints a line, `host memory: ...`, that says which it runs with,
and why not huge pages where it does not.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from videoar import host_memory

if __name__ == "__main__":
  # First, before jax is imported, so that re-executing costs no second import: malloc's large
  # blocks on transparent huge pages (videoar/host_memory.py: about 9 % off a CPU train step).
  host_memory.reexec_with_huge_pages()

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from videoar import errors, experiment, files, trainer, validate
from videoar.data import video_folder
from videoar.eval import run

MODES = ("all", "train", "sample", "evaluate")
# What a user can act on, printed as one line; anything else is a bug and keeps its traceback.
# A step that is not finite (FloatingPointError) names its cause too.
USER_ERRORS = errors.USER_ERRORS + (FloatingPointError,)

config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (configs/NAME.py[:VARIANT]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, samples and eval.")
flags.DEFINE_enum("mode", "all", MODES, "What to run.")
flags.DEFINE_bool("verbose", False, "Show INFO logs (orbax logs every checkpoint step at INFO).")
flags.DEFINE_bool("restart_from_weights", False,
                  "Start a new run from the weights of WORKDIR's newest checkpoint (fresh step and"
                  " optimizer; the old run's checkpoints and logs move to WORKDIR/previous/).")
flags.DEFINE_bool("distributed", False,
                  "Join a multi-process run that the environment describes (see above).")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def _uses_cache(config) -> bool:
  """Whether a run of `config` may write files.cache_directory(): FVD's I3D features, Moving-
  MNIST's digit classifier, a video folder's frames when its data.path cannot hold them. Other
  runs never touch it, and a home that cannot be written must not stop them."""
  if config is None:
    return False
  if config.eval.fvd or config.data.source == "moving_mnist":
    return True
  path = config.data.get("path")
  return (config.data.source == "video_folder" and bool(path)
          and not video_folder.caches_in_place(path))


def _parse_flags(argv: list[str]) -> list[str]:
  """errors.parse_flags, and a workdir or cache directory that cannot be a directory, or cannot
  be written, in one line."""
  remaining = errors.parse_flags(argv)
  problem = errors.run_directory_problem("--workdir", FLAGS.workdir, "the run's directory")
  if problem:
    errors.exit_with_error(problem)
  # The directories a run writes into: a file there would stop it after compiling, and at its
  # first checkpoint with advice (to rerun) that cannot help; a symlink to nothing, the same.
  for path in (FLAGS.workdir, *(os.path.join(FLAGS.workdir, name)
                                for name in ("checkpoints", "tensorboard"))):
    if os.path.islink(path) and not os.path.exists(path):
      errors.exit_with_error(f"--workdir={FLAGS.workdir}: {path} is a symlink to"
                             f" {os.readlink(path)}, which does not exist")
    if path != FLAGS.workdir and os.path.exists(path) and not os.path.isdir(path):
      errors.exit_with_error(f"--workdir={FLAGS.workdir}: {path} is a file where the run keeps"
                             f" its {os.path.basename(path)}; move it")
  data_path = FLAGS.config.data.get("path") if FLAGS.config else None
  if data_path:
    data, workdir = (os.path.realpath(p) for p in (data_path, FLAGS.workdir))
    # A folder source reads every video under it: the run's own samples would join its data.
    if os.path.commonpath([data, workdir]) == data:
      errors.exit_with_error(f"--workdir={FLAGS.workdir} is inside config.data.path={data_path}:"
                             " the run would write into the folder it reads its data from;"
                             " choose a workdir outside it")
  if FLAGS.restart_from_weights and FLAGS.mode not in ("all", "train"):
    errors.exit_with_error(f"--restart_from_weights starts a training run: with --mode={FLAGS.mode}"
                           " it would do nothing; use --mode=train or --mode=all")
  # Tried by writing, in every mode: a workdir or cache that could not be written stopped a run
  # with a traceback only once it had trained, sampled or evaluated, its outputs lost. The cache
  # only where the run may use it.
  problem = files.unwritable(FLAGS.workdir)
  if problem:
    verb = "write to" if os.path.isdir(FLAGS.workdir) else "create"
    errors.exit_with_error(f"cannot {verb} the workdir {FLAGS.workdir}: {problem}")
  if _uses_cache(FLAGS.config):
    cache = files.cache_directory()
    named = f"the cache directory {cache} (${files.CACHE_ENV}, default ~/.cache/videoar)"
    blocking = files.blocking_file(cache)
    if blocking:
      errors.exit_with_error(f"{named} cannot be made: {blocking} is a file")
    problem = files.unwritable(cache)
    if problem:
      made = "written" if os.path.isdir(cache) else "made"
      errors.exit_with_error(f"{named} cannot be {made}: {problem}; set ${files.CACHE_ENV} to a"
                             " directory this run can write")
  return remaining


def _join_processes() -> None:
  env = lambda name: int(os.environ[name]) if name in os.environ else None
  # Unset values are left to JAX's detection of the cluster it runs on.
  try:
    jax.distributed.initialize(num_processes=env("JAX_NUM_PROCESSES"),
                               process_id=env("JAX_PROCESS_ID"))
  except ValueError as e:  # what JAX raises where it finds no cluster and none is named
    errors.exit_with_error(f"--distributed: {str(e).rstrip('.')}: run under Cloud TPU, Slurm,"
                           " Open MPI or Kubernetes, or set JAX_COORDINATOR_ADDRESS,"
                           " JAX_NUM_PROCESSES and JAX_PROCESS_ID")


def _resume_advice(interrupted: trainer.Interrupted, restart_from_weights: bool) -> str:
  """What was saved and how to go on; --restart_from_weights would start yet another run."""
  if restart_from_weights:
    return (f"saved step {interrupted.step}; the same command without --restart_from_weights"
            " resumes from it")
  return f"saved step {interrupted.step}; the same command resumes from it"


class _Stopped(Exception):
  """A SIGTERM outside the trainer's steps, which take it themselves (trainer.Interrupted)."""

  def __init__(self, signum: int):
    super().__init__(signal.Signals(signum).name)
    self.signal = signal.Signals(signum)


def _raise_stopped(signum, frame):
  errors.raise_from_signal(signum, frame, _Stopped(signum))


# What the run is doing, for the line a signal leaves: "training" (from the start of a run that
# trains to the end of its last save), "sampling" or "evaluating".
_stage = "training"


def _stopped_line(signame: str, workdir: str) -> str:
  """What a signal outside the trainer's steps left, and the command that goes on."""
  if _stage == "sampling":
    return (f"stopped by {signame} while sampling: no samples were written (earlier ones stay"
            " where they were); --mode=sample writes them")
  if _stage == "evaluating":
    return (f"stopped by {signame} while evaluating: no evaluation was written (an earlier one"
            " stays where it was); --mode=evaluate makes it")
  return (f"stopped by {signame} outside the training steps; the same command goes on from the"
          f" newest checkpoint in {workdir}, if any")


def _run(config, workdir: str, mode: str) -> None:
  global _stage
  _stage = {"sample": "sampling", "evaluate": "evaluating"}.get(mode, "training")
  exp = experiment.build(config)
  validate.validate_platform(config, jax.default_backend())
  if jax.process_index() == 0:
    print(host_memory.memory_line(dict(os.environ), *host_memory.host_settings()))
  if mode in ("all", "train"):
    trainer.train(exp, workdir, restart_from_weights=FLAGS.restart_from_weights)
  if mode in ("all", "sample", "evaluate"):
    if mode != "all":  # "all" trained (or resumed) this very run
      experiment.check_trained_alike(workdir, config)
    trained = experiment.restore_trained(exp, workdir, use_ema=config.sample.use_ema)
    if mode in ("all", "sample"):
      _stage = "sampling"
      print(f"samples: {run.sample(exp, trained.params, workdir)}")
    if mode in ("all", "evaluate"):
      _stage = "evaluating"
      run.evaluate(exp, trained.params, workdir, checkpoint_step=trained.step)


def main(argv):
  del argv
  # Each line as it is printed, also into a file or pipe (Python buffers them there): a log that
  # is followed (tail -f) shows "samples: ..." when sampling ends, not with the last line.
  sys.stdout.reconfigure(line_buffering=True)
  if not FLAGS.verbose:
    logging.set_verbosity(logging.WARNING)
  start = time.perf_counter()
  if FLAGS.distributed:
    _join_processes()
    if jax.process_count() > 1 and FLAGS.mode != "train":
      errors.exit_with_error(f"--mode={FLAGS.mode} samples and evaluates in one process; with"
                       f" {jax.process_count()} processes run --mode=train")
  if jax.process_count() == 1:
    # Outside the trainer's steps (compiling, sampling, evaluating) a SIGTERM ends the run with
    # a line, not silently; the trainer takes SIGTERM itself while it steps.
    signal.signal(signal.SIGTERM, _raise_stopped)
    # Left ignored where it is (a background job's).
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
      signal.signal(signal.SIGINT, errors.interrupt)
  try:
    _run(FLAGS.config, FLAGS.workdir, FLAGS.mode)
  except _Stopped as e:
    # A planned stop, as a preemption during training is: exit status 0.
    print(_stopped_line(e.signal.name, FLAGS.workdir), flush=True)
    return
  except USER_ERRORS as e:
    errors.exit_with_error(str(e))
  except trainer.RunFailed as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  except trainer.Interrupted as e:
    if e.signal == signal.SIGTERM:
      # A planned stop (preemption, a time limit): every process exits 0 after saving, so a
      # launcher that kills the others on a failed one (srun --kill-on-bad-exit) lets them save.
      if jax.process_index() == 0:
        print(f"preempted: {_resume_advice(e, FLAGS.restart_from_weights)}")
      return
    print(f"interrupted by {e.signal.name}: {_resume_advice(e, FLAGS.restart_from_weights)}",
          file=sys.stderr)
    sys.exit(128 + e.signal)  # the shell's status for "ended by this signal"
  except KeyboardInterrupt:
    if _stage == "training":
      print(f"stopped at once by SIGINT; the same command resumes from the newest checkpoint in"
            f" {FLAGS.workdir}", file=sys.stderr, flush=True)
    else:
      print(_stopped_line("SIGINT", FLAGS.workdir), file=sys.stderr, flush=True)
    sys.stdout.flush()
    # At once: a save the first Ctrl-C started may still be writing on orbax's threads, which an
    # orderly exit would wait for and then fill with tracebacks. Its unfinished temporary
    # directory is not a checkpoint; the next run removes it.
    os._exit(128 + signal.SIGINT)
  if jax.process_index() == 0:
    print(f"videoar {FLAGS.mode} finished in {time.perf_counter() - start:.0f} s; outputs in"
          f" {FLAGS.workdir}")


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
