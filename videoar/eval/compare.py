"""Puts the long-horizon tables of several runs side by side.

  python -m videoar.eval.compare NAME=RUN [NAME=RUN ...] [--json PATH] [--markdown PATH]
      [--paired A:B ...]

Each RUN is a workdir holding the eval.json an `evaluate` run wrote, or the path of such a file
(a copy kept after the workdir is gone, e.g. docs/sweep_rf_dm/); the baselines (copy_last,
background) come from the first run. With several seeds per arm (NAME=RUN1,RUN2,...) the mean
is shown, and under it the row "NAME sd", each figure's standard deviation over the seeds that
have a finite number for it ("-" where fewer than 2 have; a note under the tables names each
figure that fewer than all the seeds have). Runs made on different data (their eval.json's
config differs in data.source or data.options) are refused in one line: their figures are of
different worlds, which neither a mean over seeds nor one table can put together.
`--paired A:B` also counts, per metric, the seed-segments where arm A's figure is below arm B's
at the same seed (the n-th run of A against the n-th of B): a paired comparison, which the means
and spreads alone do not give; the paired runs must have the same segments.
--json and --markdown name new files, each written whole; one that is empty, exists, or is in
a folder that is not there or cannot be written is refused before a table is printed. An arm
may not be named as a row compare adds (copy_last, background, "NAME sd", "NAME n").
`combine` and `markdown` are the same for videoar.sweep, which writes its arms' table through
them.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from videoar import errors, files
from videoar.eval import long_horizon
from videoar.train import workdir as workdir_lib


def _mean(numbers: list[float]) -> float | None:
  return float(np.mean(numbers)) if numbers else None


def _spread(numbers: list[float]) -> float | None:
  """The standard deviation over seeds (n - 1 in the denominator); None for fewer than 2
  numbers, which have no spread to show."""
  return float(np.std(numbers, ddof=1)) if len(numbers) > 1 else None


def _mean_tables(tables: list[list[dict]], statistic=_mean) -> list[dict]:
  """One table from the seeds' tables (each a list of segment rows, as in eval.json): each
  figure is the mean over the seeds that have a number for it. A seed's null (strict JSON's
  figure that is not finite, e.g. the PSNR of an exact frame), NaN, or missing figure (e.g. one
  run without FVD) is left out of the mean; None where no seed has a number. `seeds` counts the
  tables. `statistic` of the list of numbers replaces the mean where given (e.g. _spread, or
  len to count them)."""
  rows = []
  for segment_rows in zip(*tables):
    row = {}
    for seed_row in segment_rows:
      row.update({key: value for key, value in seed_row.items() if key not in row})
    for key in row:
      values = [seed_row.get(key) for seed_row in segment_rows]
      if not all(value is None or isinstance(value, float) for value in values):
        continue  # the segment's name and frame count, the same in every seed
      numbers = [value for value in values if value is not None and not math.isnan(value)]
      row[key] = statistic(numbers)
    row["seeds"] = len(segment_rows)
    rows.append(row)
  return rows


SPREAD_SUFFIX = " sd"
COUNT_SUFFIX = " n"
# The tables `combine` takes from the first run, beside the arms'.
BASELINES = ("copy_last", "background")


def eval_json_path(run: str) -> str:
  """The eval.json of `run`: the file itself if `run` is a file or ends in .json, else
  `run`/eval.json."""
  return run if run.endswith(".json") or os.path.isfile(run) else os.path.join(run, "eval.json")


def _evaluation(run: str) -> dict:
  """`run`'s eval.json as a dict; raises errors.UserError naming a file that is not JSON or
  holds no tables (an evaluation cut short, another tool's JSON)."""
  path = eval_json_path(run)
  with open(path) as f:
    try:
      results = json.load(f)
    except ValueError as e:  # not JSON, or not text (UnicodeDecodeError)
      raise errors.UserError(f"{path} is not valid JSON ({e}): rerun --mode=evaluate in its"
                             " workdir") from e
  tables = results.get("tables") if isinstance(results, dict) else None
  if not isinstance(tables, dict) or not isinstance(tables.get("model"), list):
    raise errors.UserError(f"{path} is not an eval.json (it has no \"tables\" with a \"model\""
                           " table): name the eval.json an evaluate run wrote, or its workdir")
  problem = _table_problem(tables)
  if problem:
    raise errors.UserError(f"{path} is not an eval.json an evaluation wrote ({problem}): rerun"
                           " --mode=evaluate in its workdir")
  return results


def _table_problem(tables: dict) -> str | None:
  """What keeps eval.json's tables from being an evaluation's, e.g. "table model, row 2 has no
  segment"; None when they are: each a list of rows, the model's not empty, each row a
  "segment" name and numbers (None where there is none)."""
  if not tables["model"]:
    return "its model table has no rows"
  for method, rows in tables.items():
    if not isinstance(rows, list):
      return f"table {method} is not a list of rows"
    for number, row in enumerate(rows, 1):
      if not isinstance(row, dict) or not isinstance(row.get("segment"), str):
        return f"table {method}, row {number} has no segment"
      for key, value in row.items():
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if key != "segment" and value is not None and not numeric:
          return f"table {method}, row {number}: {key} is {value!r}, not a number"
  return None


def _tables(run: str) -> dict[str, list[dict]]:
  """The tables of `run`'s eval.json ({"model": rows, "copy_last": rows, ...}); raises
  errors.UserError as _evaluation does."""
  return _evaluation(run)["tables"]


def recorded_config(run: str) -> dict | None:
  """The config `run`'s evaluation ran with (its eval.json's "config", as a dict), or None for
  an eval.json written before evaluations recorded it. Raises errors.UserError as _evaluation
  does."""
  config = _evaluation(run).get("config")
  return config if isinstance(config, dict) else None


def evaluated_step(run: str) -> int | None:
  """The step of the checkpoint `run`'s evaluation read (its eval.json's "checkpoint_step"), or
  None where it records none (an eval.json written before evaluations recorded it, or of a
  workdir without checkpoints). Raises errors.UserError as _evaluation does."""
  step = _evaluation(run).get("checkpoint_step")
  return step if isinstance(step, int) and not isinstance(step, bool) else None


def check_one_world(configs: dict[str, dict | None]) -> None:
  """Checks that runs to be combined or compared were made on the same data.

  Args:
    configs: {run's name: the config it was made with, as a dict (an eval.json's or a run.json's
      "config"), or None where none was recorded, which is left out}.

  Raises:
    errors.UserError: two runs differ in data.source or data.options; the line names them and
      the first key that differs.
  """
  recorded = [(name, config) for name, config in configs.items() if config is not None]
  for name, config in recorded[1:]:
    difference = workdir_lib.data_difference(recorded[0][1], config)
    if difference:
      raise errors.UserError(
          f"{recorded[0][0]} and {name} were made on different data: {difference}; combine and"
          " compare runs of one world only")


def combine(runs: dict[str, list[str]]) -> dict[str, list[dict]]:
  """The model tables of several arms from their runs' eval.json, side by side.

  Args:
    runs: {arm name: [RUN, ...]}, one per seed, each a workdir holding an eval.json or the path
      of an eval.json.

  Returns {method: segment rows} (long_horizon.segment_table's rows): per arm its mean over the
  seeds (_mean_tables; each row's `seeds` counts them), with several seeds also "NAME sd", each
  figure's standard deviation (n - 1; None where fewer than 2 seeds have a number), and
  "NAME n", how many seeds have a number for each figure; then the baselines copy_last and
  background of the first run. Raises FileNotFoundError naming an eval.json that does not exist,
  errors.UserError one that is not an evaluation's, or two runs made on different data
  (check_one_world: every run of every arm against the first).
  """
  check_one_world({run: recorded_config(run) for seed_runs in runs.values() for run in seed_runs})
  combined, baselines = {}, None
  for name, seed_runs in runs.items():
    results = [_tables(run) for run in seed_runs]
    combined[name] = _mean_tables([r["model"] for r in results])
    if len(results) > 1:
      for suffix, statistic in ((SPREAD_SUFFIX, _spread), (COUNT_SUFFIX, len)):
        combined[name + suffix] = [
            {key: value for key, value in row.items() if key != "seeds"}
            for row in _mean_tables([r["model"] for r in results], statistic=statistic)]
    if baselines is None:
      baselines = {k: v for k, v in results[0].items() if k in BASELINES}
  combined.update(baselines or {})
  return combined


def segment_mismatch(first: list[str], second: list[str]) -> str | None:
  """Why two arms' runs (workdirs or eval.json paths) cannot be paired seed n with seed n and
  segment by segment, e.g. "a/seed0 has segments 0-7, 8-15, 16-23 and b/seed0 0-7, 8-15" (an
  evaluation of other eval.* values); None when each pair has the same segments. Assumes as
  many runs in each; raises as _evaluation does."""
  for run_a, run_b in zip(first, second):
    segments = [[row["segment"] for row in _tables(run)["model"]] for run in (run_a, run_b)]
    if segments[0] != segments[1]:
      return f"{run_a} has segments {', '.join(segments[0])} and {run_b} {', '.join(segments[1])}"
  return None


def paired(first: list[str], second: list[str]) -> dict[str, dict[str, int]]:
  """Seed-by-seed counts of two arms' model tables: per metric, over every seed and segment
  where both have a number, {"below": first's figure is lower, "equal", "above", "total"}.

  Args:
    first, second: the arms' runs (workdirs or eval.json paths), seed n of one paired with seed
      n of the other.

  Raises ValueError if the two arms have different numbers of runs, or a pair other segments
  (segment_mismatch), and FileNotFoundError naming an eval.json that does not exist.
  """
  if len(first) != len(second):
    raise ValueError(f"paired arms need as many runs each; got {len(first)} and {len(second)}")
  mismatch = segment_mismatch(first, second)
  if mismatch:
    raise ValueError(mismatch)
  counts: dict[str, dict[str, int]] = {}
  for run_a, run_b in zip(first, second):
    for row_a, row_b in zip(*(_tables(run)["model"] for run in (run_a, run_b))):
      for key, a in row_a.items():
        b = row_b.get(key)
        if not isinstance(a, float) or not isinstance(b, float) or math.isnan(a) or math.isnan(b):
          continue
        count = counts.setdefault(key, dict(below=0, equal=0, above=0, total=0))
        count["below" if a < b else "equal" if a == b else "above"] += 1
        count["total"] += 1
  return counts


def _by_arm(combined: dict[str, list[dict]], suffix: str) -> dict[str, list[dict]]:
  """`combine`'s rows of one kind ("NAME sd" or "NAME n") by arm name."""
  return {name[:-len(suffix)]: rows for name, rows in combined.items() if name.endswith(suffix)}


def text_tables(combined: dict[str, list[dict]]) -> dict[str, list[dict]]:
  """`combine`'s tables without the count rows ("NAME n"), as long_horizon.format_table shows
  them: means, spreads and baselines."""
  return {name: rows for name, rows in combined.items() if not name.endswith(COUNT_SUFFIX)}


def partial_figures(combined: dict[str, list[dict]]) -> list[str]:
  """A line per figure of `combine`'s tables that fewer than all of its arm's seeds have a
  number for, e.g. "arm: psnr 8-15 over 1 of 2 seeds (the others have no finite number)"."""
  lines = []
  for arm, counts in _by_arm(combined, COUNT_SUFFIX).items():
    for mean_row, count_row in zip(combined[arm], counts):
      for key, count in count_row.items():
        if key not in ("segment", "frames") and 0 < count < mean_row["seeds"]:
          lines.append(f"{arm}: {key} {count_row['segment']} over {count} of {mean_row['seeds']}"
                       " seeds (the others have no finite number)")
  return lines


def recipe_differences(configs: dict[str, dict | None]) -> list[str]:
  """A line per run made with other values than the first run's, besides the seed and the
  paths of each seed's own stages (Self Forcing's teacher and generator, an ODE stage's pairs),
  e.g. "b/eval.json differs from a/eval.json in model.depth 1 -> 9: its mean is not one
  recipe's over seeds": a mean over these runs is then not one recipe's over seeds.

  Args:
    configs: {run: the config it was made with, as a dict (an eval.json's or a run.json's
      "config"), or None where none was recorded, which is left out}.
  """
  own = {"seed", "data.path", "forcing.teacher_workdir", "forcing.generator_workdir"}
  recorded = [(run, config) for run, config in configs.items() if config is not None]
  lines = []
  for run, config in recorded[1:]:
    differences = [d for d in workdir_lib.result_differences(recorded[0][1], config)
                   if d.path not in own]
    if differences:
      lines.append(f"{run} differs from {recorded[0][0]} in"
                   f" {', '.join(map(str, differences[:3]))}"
                   f"{f' (and {len(differences) - 3} more)' if len(differences) > 3 else ''}:"
                   " its mean is not one recipe's over seeds")
  return lines


def seed_differences(runs: dict[str, list[str]]) -> list[str]:
  """recipe_differences' lines for each arm's runs (their eval.json's configs), each after
  "arm NAME: "."""
  return [f"arm {name}: {line}" for name, seed_runs in runs.items()
          for line in recipe_differences({run: recorded_config(run) for run in seed_runs})]


def comma_split_path(pieces: list[str], index: int) -> str | None:
  """The path that exists where pieces[index], a piece of a comma-separated list of runs that
  names nothing, is part of a path with commas in it (pieces[i:j] joined again by commas, i <=
  index < j), e.g. "runs/a,b" for ["runs/a", "b"] and index 0; None where there is none."""
  for start in range(index + 1):
    for end in range(index + 1, len(pieces) + 1):
      if end - start > 1 and os.path.exists(",".join(pieces[start:end])):
        return ",".join(pieces[start:end])
  return None


def new_file_problem(flag: str, path: str | None) -> str | None:
  """The line refusing FLAG=PATH as the new file a command is to write (compare's --json and
  --markdown, docs/rollout_paths.py's --json), or None where it can be written, or for None (no
  such flag): empty, in no folder, a folder, a file (or link) that exists (nothing a user has is
  written over), or in a folder that cannot be written (files.unwritable_file, e.g. /proc).
  Checked before the work whose result it is to hold."""
  if path is None:
    return None
  if not path:
    return f"{flag} is empty; name the file to write"
  folder = os.path.dirname(path)
  if not os.path.isdir(folder or "."):
    return f"{flag}={path}: no folder {folder}"
  if os.path.isdir(path):
    return f"{flag}={path} is a folder; name the file to write"
  # lexists: a link, even one to nothing, is replaced, not written through.
  if os.path.lexists(path):
    return f"{flag}={path} exists; name a new file, or move it away first"
  problem = files.unwritable_file(path)
  return f"{flag}={path}: {problem}" if problem else None


def markdown(combined: dict[str, list[dict]]) -> str:
  """`combine`'s tables as Markdown: per metric (long_horizon.METRIC_TITLES' order and number
  formats) a table with a row per arm or baseline and a column per segment, each cell the mean
  and, where the arm has a spread row, "± sd" ("± -" where fewer than 2 seeds have a number),
  then "(K of N seeds)" where only K of its N seeds have one; "-" where there is no number."""
  spreads = _by_arm(combined, SPREAD_SUFFIX)
  counts = _by_arm(combined, COUNT_SUFFIX)
  methods = {name: rows for name, rows in combined.items()
             if not name.endswith((SPREAD_SUFFIX, COUNT_SUFFIX))}
  segments = list(dict.fromkeys(row["segment"] for rows in methods.values() for row in rows))
  names = list(dict.fromkeys(key for rows in methods.values() for row in rows for key in row
                             if key not in ("segment", "frames", "seeds")))
  order = list(long_horizon.METRIC_TITLES)
  names.sort(key=lambda name: order.index(name) if name in order else len(order))
  blocks = []
  for name in names:
    number = long_horizon.METRIC_FORMATS.get(name, long_horizon.DEFAULT_FORMAT).format
    lines = [f"**{long_horizon.METRIC_TITLES.get(name, name)}**", "",
             "| method | seeds | " + " | ".join(segments) + " |",
             "| --- | ---: |" + " ---: |" * len(segments)]
    for method, rows in methods.items():
      by_segment = {row["segment"]: row for row in rows}
      spread = {row["segment"]: row for row in spreads.get(method, [])}
      counted = {row["segment"]: row for row in counts.get(method, [])}
      cells = []
      for segment in segments:
        value = by_segment.get(segment, {}).get(name)
        if value is None:
          cells.append("-")
          continue
        cell = number(value)
        if method in spreads:
          sd = spread.get(segment, {}).get(name)
          cell += f" ± {'-' if sd is None else number(sd)}"
        count, of = counted.get(segment, {}).get(name), by_segment[segment].get("seeds")
        if count is not None and count < of:
          cell += f" ({count} of {of} seeds)"
        cells.append(cell)
      seeds = rows[0].get("seeds", "-") if rows else "-"
      lines.append(f"| {method} | {seeds} | " + " | ".join(cells) + " |")
    blocks.append("\n".join(lines))
  return "\n\n".join(blocks) + "\n"


def main(argv=None):
  parser = errors.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("runs", nargs="+", help="NAME=RUN[,RUN...], each RUN a workdir or eval.json")
  parser.add_argument("--json", help="also write the combined tables here")
  parser.add_argument("--markdown", help="also write them here as Markdown (mean ± sd)")
  parser.add_argument("--paired", action="append", default=[], metavar="A:B",
                      help="also count, per metric, the seed-segments where arm A is below arm B"
                      " at the same seed (repeatable)")
  args = parser.parse_args(argv)
  runs = {}
  for spec in args.runs:
    name, _, dirs = spec.partition("=")
    if not name or not dirs:
      parser.error(f"run {spec!r} is not NAME=RUN[,RUN...]")
    if name in runs:
      parser.error(f"arm {name!r} is named twice; give each arm one NAME=RUN1,RUN2,...")
    # The table's rows are keyed by name: such an arm would replace a baseline, or be read as
    # another arm's spread or count.
    if name in BASELINES or name.endswith((SPREAD_SUFFIX, COUNT_SUFFIX)):
      parser.error(f"arm {name!r} is named like a row compare adds ({', '.join(BASELINES)}, or"
                   f" NAME{SPREAD_SUFFIX} and NAME{COUNT_SUFFIX} under an arm of several seeds);"
                   " name it otherwise")
    runs[name] = dirs.split(",")
    for index, run in enumerate(runs[name]):
      if not os.path.isfile(eval_json_path(run)):
        whole = comma_split_path(runs[name], index)
        if whole:
          parser.error(f"{name}={run}: no {eval_json_path(run)}, but {whole} exists: the path"
                       " contains a comma, which separates an arm's runs here; rename the"
                       " folder or link it")
        parser.error(f"{name}={run}: no {eval_json_path(run)} (a workdir after `evaluate`, or "
                     "an eval.json)")
      try:
        _tables(run)
      except errors.UserError as e:
        parser.error(f"{name}={run}: {e}")
    evaluations = [os.path.realpath(eval_json_path(run)) for run in runs[name]]
    if len(set(evaluations)) < len(evaluations):
      parser.error(f"{name}={dirs}: names one evaluation twice; each run of an arm is one seed")
    # The mean over seeds pairs their rows in order: other segments were cut to the shortest.
    mismatch = segment_mismatch(runs[name][:1] * (len(runs[name]) - 1), runs[name][1:])
    if mismatch:
      parser.error(f"{name}={dirs}: {mismatch}; an arm's seeds are averaged segment by segment,"
                   " so evaluate them over the same segments")
  inputs = {os.path.realpath(eval_json_path(run)) for dirs in runs.values() for run in dirs}
  if args.json and args.markdown and os.path.realpath(args.json) == os.path.realpath(
      args.markdown):
    parser.error(f"--json={args.json} and --markdown={args.markdown} name one file; name two")
  for flag, path in (("--json", args.json), ("--markdown", args.markdown)):
    if path is not None and os.path.realpath(path) in inputs:
      parser.error(f"{flag}={path} is one of the runs' eval.json; name another file")
    problem = new_file_problem(flag, path)
    if problem:
      parser.error(problem)
  pairs = []
  for spec in args.paired:
    a, _, b = spec.partition(":")
    if a not in runs or b not in runs or a == b:
      parser.error(f"--paired={spec}: needs A:B, two of the arms {', '.join(runs)}")
    if len(runs[a]) != len(runs[b]):
      parser.error(f"--paired={spec}: {a} has {len(runs[a])} runs and {b} {len(runs[b])}; "
                   "seeds pair by position")
    mismatch = segment_mismatch(runs[a], runs[b])
    if mismatch:
      parser.error(f"--paired={spec}: {mismatch}; seeds pair segment by segment, so evaluate"
                   " both arms over the same segments")
    pairs.append((a, b))
  try:
    combined = combine(runs)
  except errors.UserError as e:  # runs made on different data
    parser.error(str(e))
  print(long_horizon.format_table(text_tables(combined)))
  for line in partial_figures(combined) + seed_differences(runs):
    print(f"note: {line}")
  for a, b in pairs:
    print(f"\n{a} below {b} at the same seed (seed-segments: below / equal / above):")
    for key, count in paired(runs[a], runs[b]).items():
      print(f"  {key}: {count['below']} / {count['equal']} / {count['above']} of {count['total']}")
  if args.json is not None:
    with files.replaced(args.json) as f:
      json.dump(combined, f, indent=1)
  if args.markdown is not None:
    with files.replaced(args.markdown) as f:
      f.write(markdown(combined))


if __name__ == "__main__":
  main()
