"""A strip of bouncing-world continuations in which an object is lost after an overlap.

  python docs/overlap_strip.py --config=configs/bouncing_tiny.py --workdir=runs/bouncing_tiny \
      [--out=docs/samples_bouncing_tiny_overlaps.png]

Continues the evaluation's held-out clips exactly as `--mode=evaluate` does (the same clips and
sampling noise) and picks, of each kind, the --per_kind clips in which the model loses the most
object-frames (objects.OverlapScorer's sense) after an overlap: clips whose objects overlap in the
context frames, and clips whose objects first overlap 2 or more frames into the continuation,
after the model has drawn them apart. Rows
alternate truth and model, every second frame, the first column the last context frame
(run.strip). Prints which clips were picked, and each clip's first overlap and lost object-frames.
The strip goes to --out, by default WORKDIR/overlap_strip.png. Where no clip loses an object after
an overlap, it says so in one line (exit status 2) and draws nothing.
"""

from __future__ import annotations

import os
import sys

from absl import flags, logging
import jax
from ml_collections import config_flags
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from videoar import errors, experiment, media  # noqa: E402
from videoar.eval import objects, routing_figure, run  # noqa: E402

config_flags.DEFINE_config_file("config", None, "The bouncing-world model's config.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "The trained run's directory.")
flags.DEFINE_integer("per_kind", 2, "Clips of each kind in the strip.", lower_bound=1)
flags.DEFINE_string("out", None, "Where to write the strip (default: WORKDIR/overlap_strip.png).")
FLAGS = flags.FLAGS
LATER_FROM = 2


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore's steps at INFO
  c = FLAGS.config
  out = FLAGS.out or os.path.join(FLAGS.workdir, "overlap_strip.png")
  # Both before the minutes of building and continuing the clips; the checkpoint first, as the
  # default --out's folder is the workdir, which check_out would make.
  experiment.require_checkpoint(FLAGS.workdir)
  routing_figure.check_out(out)
  exp = experiment.build(c)
  params = experiment.restore_params(exp, FLAGS.workdir, use_ema=c.sample.use_ema)
  clips, generated = run.continue_clips(exp, params, c.eval.num_clips, jax.random.key(c.seed + 2))
  num_context = c.sample.context_frames
  overlapped = objects.overlapped_before(clips["positions"], exp.source.radius)
  continuation = overlapped[:, num_context:]
  scorer = objects.OverlapScorer(clips["color_ids"], continuation, exp.source.palette_array())
  fraction = scorer(generated, None, slice(None))["lost_after_overlap"]  # [B, F], NaN: none yet
  lost_after = np.rint(np.nan_to_num(fraction) * continuation.sum(-1)).astype(int).sum(-1)
  ever = overlapped.any(-1)  # [B, F]: some object has overlapped by this frame
  first = np.where(ever.any(-1), ever.argmax(-1), -1)  # frame of the clip, context included
  in_context = ever[:, num_context - 1]
  # Overlapping only after the model has drawn both objects apart for LATER_FROM frames.
  later = first >= num_context + LATER_FROM
  for clip, frame in enumerate(first):
    when = ("never" if frame < 0 else f"context frame {frame}" if frame < num_context
            else f"continuation frame {frame - num_context}")
    print(f"clip {clip}: first overlap {when}, {lost_after[clip]} object-frames lost after it")
  # The clips of each kind that lose the most object-frames, earlier clips first among equals.
  by_loss = np.argsort(-lost_after, kind="stable")
  picked = [int(b) for kind in (in_context, later)
            for b in [b for b in by_loss if kind[b] and lost_after[b] > 0][:FLAGS.per_kind]]
  if not picked:
    raise errors.UserError(f"no overlap found in {len(first)} clips (eval.num_clips) after which"
                           " the model loses an object (overlapping in the context frames, or"
                           f" first from continuation frame {LATER_FROM}): nothing to draw; raise"
                           " --config.eval.num_clips")
  print(f"picked clips {picked}")
  chosen = {key: value[picked] for key, value in clips.items()
            if isinstance(value, np.ndarray) and value.shape[:1] == (len(first),)}
  media.write_png(out, run.strip(chosen, generated[picked], num_context))
  print(f"wrote {out}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  errors.run(main)
