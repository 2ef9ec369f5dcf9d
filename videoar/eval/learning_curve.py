"""The learning curve of a run: its evaluation-while-training figures (eval.every) as tables.

  python -m videoar.eval.learning_curve --workdir=runs/bouncing_tiny [--metrics=lost,invented]

Reads WORKDIR/metrics.jsonl, where the trainer appends "eval/METRIC/SEGMENT" figures every
eval.every steps (eval/run.DuringTraining), and prints one Markdown table per metric: a row per
evaluated step, a column per segment, with the minutes of training to that step (from the logged
steps/s, so evaluation time is not counted).
"""

from __future__ import annotations

import json
import os

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The run's workdir.", required=True)
flags.DEFINE_list("metrics", ["lost", "invented", "color_drift", "position_error"],
                  "The metrics to print.")


def read(workdir: str) -> tuple[dict[int, dict[str, float]], dict[int, float]]:
  """({step: {"METRIC/SEGMENT": value}}, {step: training minutes to it}) of a run's
  metrics.jsonl. Raises FileNotFoundError when the run has no metrics.jsonl."""
  evals, minutes, elapsed, last_step = {}, {}, 0.0, 0
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for record in map(json.loads, f):
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


def tables(evals: dict[int, dict[str, float]], minutes: dict[int, float],
           metrics: list[str]) -> str:
  """Markdown tables, one per metric: step, minutes, then the metric per segment."""
  out = []
  for metric in metrics:
    segments = sorted({key.split("/", 1)[1] for figures in evals.values() for key in figures
                       if key.split("/", 1)[0] == metric}, key=lambda s: int(s.split("-")[0]))
    if not segments:
      continue
    out.append(f"{metric} per segment\n\n| step | minutes | " + " | ".join(segments) + " |\n"
               + "| --- " * (len(segments) + 2) + "|")
    for step in sorted(evals):
      cells = [evals[step].get(f"{metric}/{segment}") for segment in segments]
      out.append(f"| {step} | {minutes[step]:.1f} | " + " | ".join(
          "-" if value is None else f"{value:.3g}" for value in cells) + " |")
    out.append("")
  return "\n".join(out)


def main(argv):
  del argv
  evals, minutes = read(FLAGS.workdir)
  if not evals:
    raise SystemExit(f"error: {FLAGS.workdir}/metrics.jsonl holds no evaluation: train with"
                     " --config.eval.every=N")
  print(tables(evals, minutes, FLAGS.metrics))


if __name__ == "__main__":
  app.run(main)
