"""Puts the long-horizon tables of several runs side by side.

  python -m videoar.eval.compare NAME=WORKDIR [NAME=WORKDIR ...] [--json PATH]

Each WORKDIR holds the eval.json an `evaluate` run wrote; the baselines (copy_last, background)
come from the first run. With several seeds per arm (NAME=DIR1,DIR2,...) the mean is shown, and
under it the row "NAME sd", each figure's standard deviation over the seeds.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np

from videoar.eval import long_horizon


def _mean_tables(tables: list[list[dict]], statistic=np.mean) -> list[dict]:
  """One table from the seeds' tables (each a list of segment rows, as in eval.json): each
  figure is the mean over the seeds that have a number for it. A seed's null (strict JSON's
  figure that is not finite, e.g. the PSNR of an exact frame), NaN, or missing figure (e.g. one
  run without FVD) is left out of the mean; None where no seed has a number. `seeds` counts the
  tables. `statistic` of the numbers replaces the mean where given (e.g. the spread)."""
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
      row[key] = float(statistic(numbers)) if numbers else None
    row["seeds"] = len(segment_rows)
    rows.append(row)
  return rows


def _spread(numbers: list[float]) -> float:
  """The standard deviation over seeds (n - 1 in the denominator; 0 for a single number)."""
  return float(np.std(numbers, ddof=1)) if len(numbers) > 1 else 0.0


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("runs", nargs="+", help="NAME=WORKDIR[,WORKDIR...]")
  parser.add_argument("--json", help="also write the combined tables here")
  args = parser.parse_args(argv)
  combined, baselines = {}, None
  for spec in args.runs:
    name, _, dirs = spec.partition("=")
    if not dirs:
      parser.error(f"run {spec!r} is not NAME=WORKDIR")
    results = []
    for workdir in dirs.split(","):
      with open(f"{workdir}/eval.json") as f:
        results.append(json.load(f)["tables"])
    combined[name] = _mean_tables([r["model"] for r in results])
    if len(results) > 1:
      combined[f"{name} sd"] = [
          {key: value for key, value in row.items() if key != "seeds"}
          for row in _mean_tables([r["model"] for r in results], statistic=_spread)]
    if baselines is None:
      baselines = {k: v for k, v in results[0].items() if k in ("copy_last", "background")}
  combined.update(baselines or {})
  print(long_horizon.format_table(combined))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(combined, f, indent=1)


if __name__ == "__main__":
  main()
