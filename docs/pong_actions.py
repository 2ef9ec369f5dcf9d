"""Drives a trained Pong model with two action sequences from one context; writes a PNG strip.

  python docs/pong_actions.py --config=configs/atari_pong.py --workdir=runs/atari_pong

The first sample.context_frames frames of a held-out clip go into the KV cache (with their
recorded actions); then --num_frames frames are generated twice from the same noise: once
pressing UP (RIGHT) for the first half and DOWN (LEFT) for the second, once the reverse. The
agent's paddle is located in every generated frame (atari.pong_paddle_rows), and the fraction
of frames in which it moved the way the pressed action says is printed and written, with the
paddle rows, to --out with .json for .png, next to the same count over the recorded held-out
episodes (the game's own score: a paddle at a wall does not move). Rows of the strip: context + UP then DOWN; context +
DOWN then UP.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from videoar import media  # noqa: E402
from videoar.data import atari, pipeline  # noqa: E402
from videoar.eval import run  # noqa: E402
from videoar.train import loop  # noqa: E402

config_flags.DEFINE_config_file("config", None, "The Pong model's config.", lock_config=True)
flags.DEFINE_string("workdir", None, "The trained run's directory.")
flags.DEFINE_integer("num_frames", 16, "Frames generated under each action sequence.")
flags.DEFINE_string("out", "docs/pong_actions.png", "Where to write the strip.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def followed(rows: np.ndarray, pressed: np.ndarray, up: int, down: int) -> float:
  """Fraction of frames whose paddle moved the way its action says (up: row decreases)."""
  moved = np.diff(rows)
  pressed = pressed[1:]
  ok = np.where(pressed == up, moved < -0.5, np.where(pressed == down, moved > 0.5, False))
  return float(ok[np.isin(pressed, (up, down))].mean())


def recorded_followed(source, up: int, down: int) -> float:
  """`followed` over the held-out recorded episodes: what the game itself scores, below 100 %
  because a paddle pressed against the top or bottom wall cannot move further."""
  recording = source.recording
  shares, weights = [], []
  for episode, length in enumerate(recording.lengths()):
    frames = np.arange(int(length * (1.0 - source.eval_fraction)), length)
    clip = recording.read(episode, frames)
    pressed = clip["actions"]
    shares.append(followed(atari.pong_paddle_rows(clip["video"]), pressed, up, down))
    weights.append(np.isin(pressed[1:], (up, down)).sum())
  return float(np.average(shares, weights=weights))


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config = FLAGS.config
  exp = loop.build(config)
  params = loop.restore_params(exp, FLAGS.workdir, use_ema=config.sample.use_ema)
  names = exp.source.recording.action_names()
  up, down = names.index("RIGHT"), names.index("LEFT")
  num_context, half = config.sample.context_frames, FLAGS.num_frames // 2
  clip = pipeline.eval_clips(exp.source, num_clips=1, num_frames=num_context, seed=config.seed)
  sequences = np.array([[up] * half + [down] * half, [down] * half + [up] * half], np.int32)
  actions = np.concatenate([np.repeat(clip["actions"], 2, axis=0), sequences], axis=1)
  context = np.repeat(clip["video"], 2, axis=0)
  generated = np.asarray(run.make_sampler(exp).generate(
      params, jax.random.key(config.seed), 2 * half, config.sample.num_steps,
      config.sample.time_shift, jnp.asarray(context), {"actions_bf": jnp.asarray(actions)}))
  videos = np.concatenate([context, generated], axis=1)
  result = {"actions": [[names[a] for a in row] for row in sequences], "paddle_rows": [],
            "followed": []}
  for video, row in zip(videos, actions):
    rows = atari.pong_paddle_rows(video[num_context - 1:])
    result["paddle_rows"].append([None if np.isnan(r) else round(float(r), 2) for r in rows])
    result["followed"].append(followed(rows, row[num_context - 1:], up, down))
  result["recorded_followed"] = recorded_followed(exp.source, up, down)
  media.write_png(FLAGS.out, media.frame_strip(videos))
  with open(os.path.splitext(FLAGS.out)[0] + ".json", "w") as f:
    json.dump(result, f)
  for name, share in zip(("UP then DOWN", "DOWN then UP"), result["followed"]):
    print(f"{name}: the paddle moved the pressed way in {100 * share:.0f} % of frames")
  print(f"recorded held-out episodes, the same count: {100 * result['recorded_followed']:.0f} %")
  print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
  app.run(main)
