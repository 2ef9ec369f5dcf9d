"""The Wan-1.3B shape (../shared/DESIGN.md, Targets) on VAE latents with text cross-attention.

Data: pre-encoded latent sequences in ArrayRecord shards under data.path (docs/data.md,
"ArrayRecord latents"), written by an external encoder through
videoar.data.array_record.write_sequences: per frame a latent `video` [60, 104, 16] (a 480x832
video through Wan's VAE: 8x spatial, 4x temporal compression), per sequence a `text` embedding
[L, 4096] (umT5's width; pad every sequence to one L). 21 latent frames a clip (81 video frames).

Model: width 1536, 30 blocks, 12 heads of 128, MLP 8960, 2x2 patches (1560 tokens a latent
frame), velocity prediction, text cross-attention in every block; bfloat16 compute with float32
parameters and optimizer state; the blocks under nn.scan (one block compiled for all 30) and
rematerialised keeping nothing but the block inputs (docs/scaling.md). 1.54B parameters: every
block has its own AdaLN projection. The mesh is for a TPU pod slice (v5p:2x4x4 gives fsdp 8);
the optimizer values are not tuned: no run at this shape has been made here.

Variants (`--config=configs/wan_1p3b.py:VARIANT`, comma-separated):
  tf         (the default) Teacher Forcing, chunks of 3 latent frames.
  rf_routed  Resampling Forcing (autoregressive self-resampling, configs/bouncing_rf.py explains
             the knobs) with history routing: each query token attends to its own chunk and the
             top 5 history frames (25 % of 21).
  sampler    the streaming sampler of a few-step (Self Forcing) generator: chunks of 3 latent
             frames, 4 few-step steps, no guidance; a chunk sees 21 latent frames, 18 from the
             KV cache (3 sink frames kept for good, 15 rolling) and its own 3, as in training
             under the matching window and sink.
  tiny       the same code path at tiny shapes (latents TINY_LATENT_SHAPE, 2 blocks of width 32,
             9 frames, one device), with any of the others: the test suite and smoke runs. To run
             it through videoar.main, point data.path at shards written by
             videoar.data.array_record.write_sequences with `video` [F, 8, 8, 4] and `text`
             [L, 8] per sequence, F >= 24 (eval_fraction=0.5 holds out each sequence's tail);
             its samples are written as samples/samples.npz (latents have no picture here).

Compiling it for a pod without one: docs/scaling.md ("Compiling for a topology without it").
"""

import ml_collections

from videoar import base_config

# A latent frame of the tiny variant, for its tests (the full shape's, [60, 104, 16], is what
# launch/aot_compile.py and benchmarks/sampler.py take as --frame_shape=60,104,16).
TINY_LATENT_SHAPE = (8, 8, 4)
TEXT_DIM = 4096


def get_config(variant: str = ""):
  variants = base_config.variants(variant, ("tf", "rf_routed", "sampler", "tiny"))
  if "tf" in variants and "rf_routed" in variants:
    raise ValueError("config variants tf and rf_routed are different paradigms: choose one")
  config = base_config.get_config()
  config.data.source = "array_record"
  config.data.path = "data/wan_latents"
  config.data.options = ml_collections.ConfigDict(dict(stride=1, eval_fraction=0.1))
  config.data.num_frames = 21
  config.data.batch_size = 8

  m = config.model
  m.patch = 2
  m.width = 1536
  m.depth = 30
  m.num_heads = 12
  m.mlp_ratio = 8960 / 1536
  m.text_dim = TEXT_DIM
  m.prediction = "velocity"  # a 2x2x16 patch (64 values) is far narrower than the width
  m.previous_frame_input = False
  m.dtype = "bfloat16"
  m.scan_layers = True
  m.remat_policy = "nothing_saveable"

  config.forcing.paradigm = "teacher_forcing"
  config.forcing.chunk = 3
  config.optim.learning_rate = 1e-4
  config.optim.warmup_steps = 1000
  config.optim.ema_decay = 0.999
  config.train.num_steps = 100_000
  config.train.checkpoint_every = 1000
  config.sample.context_frames = 0  # text to video
  config.sample.length_multiple = 2
  config.eval.every = 0
  config.eval.segment_len = 21
  config.mesh.data = 1
  config.mesh.fsdp = -1
  config.mesh.sequence = 4

  if "tiny" in variants:
    base_config.tiny(config)
    m.depth = 2
    m.text_dim = 8
    config.data.num_frames = 9
    config.data.batch_size = 2
    config.data.options.eval_fraction = 0.5
    config.sample.length_multiple = 1
    config.eval.segment_len = 9
    config.mesh.data, config.mesh.fsdp, config.mesh.sequence = -1, 1, 1
  if "rf_routed" in variants:
    config.forcing.paradigm = "resampling"
    config.forcing.resample_mode = "autoregressive"
    config.forcing.resample_shift = 0.6
    config.forcing.resample_steps = 3
    config.forcing.warmup_steps = 1 if "tiny" in variants else 2000
    m.routing_top_k = max(1, config.data.num_frames // 4)
  if "sampler" in variants:
    config.sample.solver = "few_step"
    config.sample.num_steps = 4
    config.forcing.sink_frames = 3
    # The sink and `history_window` chunks before a chunk's own: all num_frames frames
    # (sampling.window_frames).
    config.forcing.history_window = (config.data.num_frames - 3) // config.forcing.chunk - 1
  return config
