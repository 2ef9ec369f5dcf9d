"""The built-in default: Teacher Forcing on a noise-augmented history, guided on it, bouncing world.

Two coloured objects (square or disc, 7 px across) bounce in a 32x32 box at 1-2 px per frame.
Clips of 8 frames, 8x8 patches (16 tokens a frame), a causal DiT of width 128, depth 4, decoded
through a FineDecoder at 4x4 patches (model.fine_patch: each token split into four sub-patch
tokens that read the noisy input and the previous frame at their own resolution, two blocks of
attention within the frame; models/dit.py). Sampling: frame-wise (chunk 1), 20 Euler steps, a
rolling KV cache of 7 frames, so generation runs on past the 8 training frames; evaluation
continues 2 held-out context frames for 3x the training length (24 frames) against the true
continuation.

Training: 1800 steps of batch 8 at learning rate 2e-3, evaluating 8 held-out clips every 600
steps into metrics.jsonl and tensorboard (`python -m videoar.eval.learning_curve --workdir=...`
prints the curve). After 200 steps of plain Teacher Forcing, the history the model reads
(attention and the previous-frame input) is the clip noised to a level drawn per video
(forcing/resampling.py, mode noise_augmentation, shift 0.6), while the loss stays on the clean
targets: the model learns to continue from history that is not quite right, as its own
generated history is not. One video in ten trains on the null history (zero frames,
teacher.drop_history), and sampling guides on the history at scale 3 (sample.guide_history:
classifier-free guidance whose null pass reads zero frames as its history, sampling.Sampler),
at times t >= 0.5 only (sample.guidance_interval: below it guidance only oversaturates colour).
The final evaluation scores objects, colour, position, PSNR, SSIM and LPIPS per segment; FVD
(eval.fvd, which the arms built on this model keep) is off here.

Measured on 2 idle CPU cores, 2026-12-07, nothing cached: the whole job took 9 min 32 s, of
which 1800 steps 8 min 17 s and the final evaluation 56 s, on a machine where the same job with
FVD took 11 min 15 s (its scoring 103 s). With FVD, earlier: 9 min 46 s on 2026-12-02 (1800 steps
in 7 min 19 s); 12 min 32 s on another machine, 2026-12-06 (1800 steps in 9 min 19 s, scoring
2.0 min); 15 min 4 s on a third (1800 steps in 11 min 29 s; 1200 steps would fit ten minutes
there, but seed 0 then invents objects and keeps them still, and seed 1 sits at the targets'
edge: docs/results.md, "Fewer steps"); `python -m videoar.main` runs on transparent huge pages
where the host has them (docs/performance.md, "Transparent huge pages"). Three seeds, per
8-frame segment at 3x: objects lost 0.05 / 0.09 / 0.11 a frame (sd 0.02-0.04), invented
0.02-0.04, colour drift 0.043 (the truth's 0.033-0.035), position error below copying the last
frame in every segment of every seed.
Without the FineDecoder (8x8 linear unpatchify, guidance 1.5, 2000 steps: the default
until 2026-12-02) they were 0.12 / 0.20 / 0.25 lost and 0.071-0.076 drift. The failures left:
shapes soften or stretch, an object half hidden in the context frames can come back in the
other object's colour, and objects slow down (0.93 / 0.73 / 0.67 px a frame over 3 seeds against
the truth's 1.5; configs/bouncing_rf.py:autoregressive,default_model keeps 1.0 at about 1.45x
the time: docs/results.md, "Why the default's objects slow down").

Variants (`--config=configs/bouncing_tiny.py:VARIANT`):
  patch4  4x4 patches in the trunk itself (64 tokens a frame) at width 96, no FineDecoder,
          guidance 1.5, 2000 steps: the alternative measured before the FineDecoder (seed 0:
          lost 0.12 / 0.12 / 0.14, drift 0.046-0.053; seed 1: lost 0.06 / 0.24 / 0.38), at 3.6x
          the old default's time a step.
  test    a few steps of a tiny model, for the test suite and smoke runs.
"""

from videoar import base_config


def get_config(variant: str = ""):
  config = base_config.default_model(base_config.get_config())
  config.forcing.paradigm = "resampling"
  config.forcing.resample_mode = "noise_augmentation"
  config.forcing.warmup_steps = 200
  # FVD is left to `--config.eval.fvd=True`: at these 32 held-out clips two sets of true clips
  # are already 249 apart (videoar.eval.fvd_check), and I3D at 224x224 added about 95 s to the
  # job's scoring on 2 cores (103 s with it, 6.5-8.1 s without), a sixth of the ten minutes.
  config.eval.fvd = False
  variants = base_config.variants(variant, ("patch4", "test"))
  if "patch4" in variants:
    config.model.patch = 4
    config.model.width = 96
    config.model.fine_patch = 0
    config.sample.guidance_scale = 1.5
    config.train.num_steps = 2000
    config.eval.every = 400
  if "test" in variants:
    base_config.tiny(config)
  return config
