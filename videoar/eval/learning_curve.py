"""The learning curve of a run: its evaluation-while-training figures (eval.every) as tables.

  python -m videoar.eval.learning_curve --workdir=runs/bouncing_tiny [--metrics=lost,invented]
  python -m videoar.eval.learning_curve --workdir=runs/sweep/arm/seed0,runs/sweep/arm/seed1,...

Reads WORKDIR/metrics.jsonl, where the trainer appends "eval/METRIC/SEGMENT" figures every
eval.every steps (eval/run.DuringTraining), and prints one Markdown table per metric: a row per
evaluated step, a column per segment, with the minutes of training to that step (from the logged
steps/s, so evaluation time is not counted). A run resumed with other sample.* or eval.* values
(allowed on resume) evaluates differently from that step on: a note line says where. Given
several workdirs (the seeds of one arm), each cell is the mean and standard deviation over the
runs, at the steps every run evaluated, and the minutes are their mean; runs made on different
data (their run.json's data.source or data.options differ) are refused in one line, as their
curves are of different worlds, and so is one run named twice (W and W/, or X/../W: one folder),
which is no second seed; a note line names each run made with other values than the first (its
run.json's config differs in more than the seed, as eval.compare's note for an arm).
"""

from __future__ import annotations

import json
import os

from absl import flags
import numpy as np

from videoar import errors
from videoar.eval import compare
from videoar.train import workdir as workdir_lib

FLAGS = flags.FLAGS
flags.DEFINE_list("workdir", None, "The run's workdir, or several runs' (comma-separated).",
                  required=True)
flags.DEFINE_list("metrics", ["lost", "invented", "color_drift", "position_error"],
                  "The metrics to print.")


def _records(workdir: str) -> list[dict]:
  """The records of a run's metrics.jsonl (blank lines skipped). A last line that is not JSON is
  left out: the line a running (or killed) run was writing. Raises FileNotFoundError when the
  run has no metrics.jsonl, errors.UserError naming a metrics.jsonl that is a directory, or any
  other line that is not JSON or not a record (an object with a "step")."""
  path = os.path.join(workdir, "metrics.jsonl")
  try:
    with open(path) as f:
      lines = f.read().splitlines()
  except IsADirectoryError:
    raise errors.UserError(f"{path} is a directory, not a run's metrics log: name the workdir of"
                           " a run") from None
  records = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      if number < len(lines):
        raise errors.UserError(f"{path} line {number} is not JSON ({e})") from e
      continue
    step = record.get("step") if isinstance(record, dict) else None
    if not isinstance(step, int) or isinstance(step, bool):
      raise errors.UserError(f"{path} line {number} is not a metrics record (an object with a"
                             f" \"step\"): {line.strip()[:40]!r}")
    records.append(record)
  return records


def read(workdir: str) -> tuple[dict[int, dict[str, float]], dict[int, float]]:
  """({step: {"METRIC/SEGMENT": value}}, {step: training minutes to it}) of a run's
  metrics.jsonl; raises as `_records`."""
  evals, minutes, elapsed, last_step = {}, {}, 0.0, 0
  for record in _records(workdir):
    step = record["step"]
    if record.get("steps_per_s"):
      elapsed += (step - last_step) / record["steps_per_s"] / 60.0
      last_step = step
    evaluated = {key[len("eval/"):]: value for key, value in record.items()
                 if key.startswith("eval/")}
    if evaluated:
      evals[step] = evaluated
      minutes[step] = elapsed
  return evals, minutes


def evaluation_changes(workdir: str) -> list[tuple[int, list[str]]]:
  """(step, changes) for each resume of the run with other evaluation settings
  (metrics_log.MetricsLog.write_resume): its figures before and after that step are not
  comparable. Raises as `_records`."""
  return [(record["step"], record["resumed_with"]) for record in _records(workdir)
          if "resumed_with" in record]


def over_runs(runs: list[tuple[dict, dict]]) -> tuple[dict, dict, dict]:
  """(mean, sd, minutes) over several runs' `read` results, at the steps every run evaluated:
  mean and sd are {step: {"METRIC/SEGMENT": value}} (sample sd, n - 1, as eval.compare's; a
  figure counts where every run has it), minutes {step: mean training minutes}."""
  steps = sorted(set.intersection(*(set(evals) for evals, _ in runs)))
  mean, sd, minutes = {}, {}, {}
  for step in steps:
    keys = set.intersection(*(set(k for k, v in evals[step].items() if v is not None)
                              for evals, _ in runs))
    values = {key: np.array([evals[step][key] for evals, _ in runs]) for key in keys}
    mean[step] = {key: float(v.mean()) for key, v in values.items()}
    sd[step] = {key: float(v.std(ddof=1)) for key, v in values.items()}
    minutes[step] = float(np.mean([run_minutes[step] for _, run_minutes in runs]))
  return mean, sd, minutes


def tables(evals: dict[int, dict[str, float]], minutes: dict[int, float],
           metrics: list[str], sd: dict[int, dict[str, float]] | None = None) -> str:
  """Markdown tables, one per metric: step, minutes, then the metric per segment (with `sd`,
  as mean ± sd)."""
  out = []
  for metric in metrics:
    segments = sorted({key.split("/", 1)[1] for figures in evals.values() for key in figures
                       if key.split("/", 1)[0] == metric}, key=lambda s: int(s.split("-")[0]))
    if not segments:
      continue
    out.append(f"{metric} per segment\n\n| step | minutes | " + " | ".join(segments) + " |\n"
               + "| --- " * (len(segments) + 2) + "|")
    for step in sorted(evals):
      keys = [f"{metric}/{segment}" for segment in segments]
      cells = ["-" if evals[step].get(key) is None
               else _cell(evals[step][key], None if sd is None else sd[step][key]) for key in keys]
      out.append(f"| {step} | {minutes[step]:.1f} | " + " | ".join(cells) + " |")
    out.append("")
  return "\n".join(out)


def _cell(value: float, sd: float | None) -> str:
  """A figure, with its sd at the same decimals: 3 below 1, 2 below 100, else none."""
  if sd is None:
    return f"{value:.3g}"
  decimals = 3 if abs(value) < 1 else 2 if abs(value) < 100 else 0
  return f"{value:.{decimals}f} ± {sd:.{decimals}f}"


def main(argv):
  del argv
  if not FLAGS.workdir or len(set(FLAGS.workdir)) < len(FLAGS.workdir):
    raise errors.UserError(f"--workdir={','.join(FLAGS.workdir)} must name one or more distinct"
                           " workdirs")
  # One run under two paths (W and W/, or X/../W) would be averaged with itself as two seeds.
  seen = {}
  for workdir in FLAGS.workdir:
    same = seen.setdefault(os.path.realpath(workdir), workdir)
    if same != workdir:
      raise errors.UserError(f"--workdir={','.join(FLAGS.workdir)}: {same} and {workdir} are one"
                             " run; each workdir is one seed")
  runs = []
  for index, workdir in enumerate(FLAGS.workdir):
    if os.path.isfile(workdir):
      raise errors.UserError(f"--workdir={workdir} is a file; name the run's workdir")
    try:
      runs.append(read(workdir))
    except FileNotFoundError:
      whole = compare.comma_split_path(FLAGS.workdir, index)
      if whole:
        raise errors.MissingInput(f"--workdir={workdir} holds no metrics.jsonl, but {whole}"
                                  " exists: the path contains a comma, which separates runs"
                                  " here; rename the folder or link it") from None
      raise errors.MissingInput(f"--workdir={workdir} holds no metrics.jsonl") from None
    if not runs[-1][0]:
      raise errors.UserError(f"{workdir}/metrics.jsonl holds no evaluation: train with"
                             " --config.eval.every=N")
  records = {workdir: workdir_lib.RunRecord.load(workdir) for workdir in FLAGS.workdir}
  configs = {workdir: record.config if record else None for workdir, record in records.items()}
  compare.check_one_world(configs)
  logged = {key.split("/", 1)[0] for evals, _ in runs for figures in evals.values()
            for key in figures}
  if not FLAGS.metrics:
    raise errors.UserError("--metrics is empty; name the metrics to print; allowed:"
                           f" {', '.join(sorted(logged))}")
  metrics = [metric for metric in FLAGS.metrics if metric in logged]
  # The default list is the bouncing world's: another world's run shows what it has of it.
  if len(metrics) < len(FLAGS.metrics) and (FLAGS["metrics"].present or not metrics):
    unknown = sorted(set(FLAGS.metrics) - logged)
    raise errors.UserError(f"--metrics={','.join(FLAGS.metrics)}: {', '.join(unknown)} not"
                           f" evaluated in these runs; allowed: {', '.join(sorted(logged))}")
  for line in compare.recipe_differences(configs):
    print(f"note: {line}")
  for workdir in FLAGS.workdir:
    for step, changes in evaluation_changes(workdir):
      print(f"note: {workdir} resumed at step {step} with other evaluation settings"
            f" ({', '.join(changes)}): its figures before and after step {step} are not"
            " comparable")
  if len(runs) == 1:
    print(tables(*runs[0], metrics))
  else:
    mean, sd, minutes = over_runs(runs)
    if not mean:
      raise errors.UserError("the workdirs have no evaluated step in common (eval.every must"
                             " match)")
    print(tables(mean, minutes, metrics, sd))


if __name__ == "__main__":
  errors.run(main)
