"""CausalDiT: a diffusion transformer over frames of patch tokens.

One class serves causal and bidirectional use: the mask spec passed at call time decides who sees
whom. Every frame has its own timestep, which modulates its tokens (AdaLN-zero).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from videoar.attention import masks
from videoar.diffusion import flow
from videoar.models import kv_cache as kv_cache_lib
from videoar.models import layers
from videoar.models import warp as warp_lib

PREDICTIONS = flow.PREDICTIONS + ("residual", "warp")
# What a CausalDiT predicts from the frame before its chunk (previous_frame_input).
PREDICTIONS_FROM_PREVIOUS = ("residual", "warp")
# The batch entries a model can be conditioned on, and the CausalDiT argument each becomes.
CONDITIONING_INPUTS = {"label": "labels_b", "actions": "actions_bf", "text": "text_bld"}
# Those given per frame: a sampler hands each chunk its own frames of them.
PER_FRAME_CONDITIONING = ("actions_bf",)
# The collection a CausalDiT sows its tokens after every block into, only when the caller makes
# it mutable: `(v, kv), state = model.apply(params, ..., mutable=[BLOCK_TOKENS])` gives
# state[BLOCK_TOKENS]["blocks"], a tuple of `depth` arrays [B, F, T, width], entry i the tokens
# after block i (what a discriminator head reads, models/discriminator.py). Otherwise, and at
# init, nothing is sown: outputs, parameters and cost are those of a model without it.
BLOCK_TOKENS = "block_tokens"


# How CausalDiT may rematerialise its blocks (model.remat_policy): "none" keeps every activation
# for the backward pass; the others name a jax.checkpoint_policies policy of what a block keeps,
# all else being recomputed in the backward pass.
REMAT_POLICIES = ("none", "nothing_saveable", "everything_saveable", "dots_saveable",
                  "dots_with_no_batch_dims_saveable")
# The name of the blocks' parameters when scanned (scan_layers): one tree whose leaves have a
# leading axis of `depth`, named by the logical axis SCANNED_AXIS. Unscanned, block i is "block_i".
SCANNED_BLOCKS = "scanned_blocks"
SCANNED_AXIS = "layers"


class Block(nn.Module):
  """One transformer block: AdaLN-modulated self-attention (over `mask`), optional text
  cross-attention, an MLP.

  Its arguments are arrays or None, so that nn.remat and nn.scan can wrap it (the mask, static,
  is an attribute). With `emit_tokens` the per-layer outputs include the output tokens (what
  nn.scan stacks for BLOCK_TOKENS)."""

  width: int
  num_heads: int
  mlp_ratio: float = 4.0
  attention_impl: str = "auto"
  routing_top_k: int = 0
  dtype: jnp.dtype = jnp.float32
  mask: masks.MaskSpec | None = None
  emit_tokens: bool = False

  @nn.compact
  def __call__(self, x_bftd, cache_kv, cond_bfd, text_bld, positions_t3, cache_positions_t3,
               cache_frame_valid):
    """Returns (tokens [B, F, T, width], per-layer outputs): the outputs are this call's (k, v),
    each [B, F * T, heads, head_dim], and with emit_tokens the tokens again. `cache_kv`: this
    layer's cached (k, v), each [B, slots * T, heads, head_dim], or None (then the cache
    positions and validity are None too)."""
    mod = layers.dense(6 * self.width, ("embed", "modulation"), kernel_init=nn.initializers.zeros,
                       dtype=self.dtype, name="adaln")(nn.silu(cond_bfd))
    shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = jnp.split(mod, 6, axis=-1)
    norm = lambda name: nn.LayerNorm(use_scale=False, use_bias=False, dtype=self.dtype, name=name)
    h = layers.modulate(norm("attn_norm")(x_bftd), shift_a, scale_a)
    attention_kwargs = dict(positions_t3=positions_t3, mask=self.mask)
    if cache_kv is not None:
      attention_kwargs.update(cache_kv=cache_kv, cache_positions_t3=cache_positions_t3,
                              cache_frame_valid=cache_frame_valid)
    h, new_kv = layers.Attention(self.num_heads, self.attention_impl, self.routing_top_k,
                                 self.dtype, name="attn")(
        h, **attention_kwargs)
    x_bftd = x_bftd + gate_a[:, :, None] * h
    if text_bld is not None:
      x_bftd = x_bftd + layers.CrossAttention(self.num_heads, self.dtype, name="cross_attn")(
          norm("cross_norm")(x_bftd), text_bld)
    h = layers.modulate(norm("mlp_norm")(x_bftd), shift_m, scale_m)
    h = layers.dense(int(self.width * self.mlp_ratio), ("embed", "mlp"), dtype=self.dtype,
                     name="mlp_in")(h)
    h = layers.dense(self.width, ("mlp", "embed"), dtype=self.dtype, name="mlp_out")(nn.gelu(h))
    x_bftd = layers.constrain_tokens(x_bftd + gate_m[:, :, None] * h)
    return x_bftd, new_kv + ((x_bftd,) if self.emit_tokens else ())


class CausalDiT(nn.Module):
  """Predicts the flow velocity of every frame.

  Attributes:
    patch: side of the square patches; the frame side must be a multiple.
    num_classes: > 0 adds a class-label embedding (id num_classes is the null label for CFG).
    num_actions: > 0 adds a per-frame action embedding (id num_actions is the null action).
    text_dim: > 0 conditions every block on a text embedding [L, text_dim] per video through
      cross-attention (the all-zero embedding is the null text).
    routing_top_k: > 0 routes each query token to its top-k history frames (routing.py).
    prediction: what the last layer outputs. "velocity" is eps - x directly; "data" is the clean
      frame x, turned into the velocity (x_t - x) / t. The velocity of a patch has as many
      dimensions as the patch (8x8x3 = 192) and, near t = 1, is mostly noise, which a narrower
      network cannot carry through; the clean frame lies on a low-dimensional set that it can.
      "residual" is the clean frame's change from the frame before its chunk (with
      previous_frame_input): an untrained model copies the previous frame, so small objects
      persist from the first steps and the network spends itself on what moves.
      "warp" is motion-compensated: the clean frame is the previous frame resampled at every
      pixel plus a predicted displacement (warp.warp: cubic convolution), plus a residual; the
      last layer outputs the residual's C channels and the displacement's 2 (rows, columns, in
      pixels) per pixel. Untrained it copies the previous frame, as "residual" does; trained it
      moves content by resampling it rather than redrawing it, which keeps detail over a rollout
      (Moving-MNIST: docs/results.md).
    warp_sigma: > 0 smooths a warp's displacement with a Gaussian of this standard deviation in
      pixels (warp.smooth) before it moves the frame: patches decoded separately disagree at
      their edges, and an unsmoothed warp tears the frame there (Pong: docs/results.md).
    warp_residual: a warp adds a residual (True) or is only the previous frame moved (False: the
      last layer outputs just the displacement, and a frame can hold only what the one before
      held, moved; no patch of it is redrawn). Measured on Pong (docs/results.md): no seams, but
      an object the model is unsure where to put is erased, and cannot come back.
    previous_frame_input: every token also reads the co-located patch of the clean frame before
      its chunk (`previous_frames`), next to its own. Through attention alone a small model
      learns to use its context slowly; most motion is local, and this direct path makes the
      history matter from the first steps. History still reaches further back only through
      attention, so this is a Markov-order-1 shortcut, not a replacement.
    dtype: the compute dtype (float32 or bfloat16); parameters are float32 whatever it is
      (flax's param_dtype), and softmax, normalisation statistics and the output are float32.
    scan_layers: the blocks run under nn.scan: one block is traced and compiled for all `depth`
      (compile time independent of depth), its parameters stacked under SCANNED_BLOCKS with a
      leading axis named SCANNED_AXIS. Same function and gradients as unscanned, whose
      parameters are block_0 .. block_{depth-1}.
    remat_policy: REMAT_POLICIES: "none", or the jax.checkpoint_policies policy of what each
      block keeps for the backward pass (the rest is recomputed): memory for compute.
    fine_patch: > 0 decodes through a FineDecoder at this patch side (a divisor of `patch`)
      instead of the linear unpatchify; 0 is the linear unpatchify.
    fine_width, fine_depth: the FineDecoder's token width and number of blocks.
  """

  patch: int = 4
  width: int = 128
  depth: int = 4
  num_heads: int = 4
  mlp_ratio: float = 4.0
  num_classes: int = 0
  num_actions: int = 0
  text_dim: int = 0
  attention_impl: str = "auto"
  routing_top_k: int = 0
  prediction: str = "velocity"
  previous_frame_input: bool = False
  dtype: jnp.dtype = jnp.float32
  scan_layers: bool = False
  remat_policy: str = "none"
  fine_patch: int = 0
  fine_width: int = 64
  fine_depth: int = 2
  warp_sigma: float = 0.0
  warp_residual: bool = True

  def grid(self, height: int, width: int) -> tuple[int, int]:
    return height // self.patch, width // self.patch

  def tokens_per_frame(self, height: int, width: int) -> int:
    gh, gw = self.grid(height, width)
    return gh * gw

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads

  def conditioning_keys(self) -> tuple[str, ...]:
    """The batch entries this model is conditioned on."""
    sizes = {"label": self.num_classes, "actions": self.num_actions, "text": self.text_dim}
    return tuple(key for key, size in sizes.items() if size)

  def conditioning(self, batch: dict) -> dict:
    """The conditioning keyword arguments of this model, from a batch's entries."""
    return {CONDITIONING_INPUTS[key]: batch[key] for key in self.conditioning_keys()}

  def null_conditioning(self, cond: dict) -> dict:
    """The null of each entry of `cond`: what classifier-free guidance is unconditioned on."""
    nulls = {"labels_b": lambda v: jnp.full_like(v, self.num_classes),
             "actions_bf": lambda v: jnp.full_like(v, self.num_actions),
             "text_bld": jnp.zeros_like}
    return {key: nulls[key](value) for key, value in cond.items()}

  def with_null_conditioning(self, cond: dict) -> dict:
    """`cond` of batch B followed by its null: the conditioning of classifier-free guidance's
    two passes in one call of batch 2B (conditional rows first)."""
    null = self.null_conditioning(cond)
    return {key: jnp.concatenate([value, null[key]]) for key, value in cond.items()}

  @nn.compact
  def __call__(self, x_bfhwc, t_bf, *, frame_pos_f, mask: masks.MaskSpec, labels_b=None,
               actions_bf=None, text_bld=None, previous_bfhwc=None,
               cache: kv_cache_lib.KVCache | None = None, outputs_from: int = 0):
    """Returns (velocity [B, F, H, W, C], new (k, v) of this call's tokens, each
    [depth, B, F, T, heads, head_dim]) so that a sampler can write them to its cache.
    `previous_bfhwc`: with previous_frame_input, the clean frame before each frame's chunk
    (zeros where there is none). `outputs_from` (static): the velocity is returned for frames
    outputs_from.. only, [B, F - outputs_from, H, W, C]; the frames before it are only read as
    keys and values (a teacher-forcing history), and what only their output needs (the final
    layer, the FineDecoder) is not computed for them.

    With `cache`, `frame_pos_f` and the mask are those of the queries; the mask spans
    [F, slots + F] key frames (cache first). With BLOCK_TOKENS mutable, every block's output
    tokens are sown into it (see BLOCK_TOKENS)."""
    b, f, h, w, c = x_bfhwc.shape
    p = self.patch
    gh, gw = self.grid(h, w)
    tokens = patchify(x_bfhwc, p)
    if self.prediction in PREDICTIONS_FROM_PREVIOUS and not self.previous_frame_input:
      raise ValueError(f"CausalDiT(prediction={self.prediction!r}) needs previous_frame_input=True")
    if self.previous_frame_input:
      if previous_bfhwc is None:
        raise ValueError("CausalDiT(previous_frame_input=True) needs previous_bfhwc")
      tokens = jnp.concatenate([tokens, patchify(previous_bfhwc, p)], axis=-1)
    tokens = tokens.astype(self.dtype)
    x = layers.dense(self.width, ("patch", "embed"), dtype=self.dtype, name="patch_embed")(tokens)

    cond = layers.timestep_embedding(t_bf, 256)
    cond = layers.dense(self.width, ("time_features", "cond"), dtype=self.dtype,
                        name="time_in")(cond)
    cond = layers.dense(self.width, ("cond", "embed"), dtype=self.dtype,
                        name="time_out")(nn.silu(cond))
    if self.num_classes:
      if labels_b is None:
        raise ValueError("CausalDiT(num_classes>0) needs labels_b")
      cond = cond + layers.embed(self.num_classes + 1, self.width, name="label_embed")(
          labels_b)[:, None]
    if self.num_actions:
      if actions_bf is None:
        raise ValueError("CausalDiT(num_actions>0) needs actions_bf")
      cond = cond + layers.embed(self.num_actions + 1, self.width, name="action_embed")(
          actions_bf)
    text = None
    if self.text_dim:
      if text_bld is None or text_bld.shape[-1] != self.text_dim:
        got = "none" if text_bld is None else f"shape {text_bld.shape}"
        raise ValueError(f"CausalDiT(text_dim={self.text_dim}) needs text_bld [B, L,"
                         f" {self.text_dim}], got {got}")
      text = layers.dense(self.width, ("text_features", "embed"), dtype=self.dtype,
                          name="text_in")(text_bld.astype(self.dtype))

    x, cond = layers.constrain_tokens(x), layers.constrain_cond(cond)

    positions = layers.token_positions(frame_pos_f, gh, gw)
    heads, head_dim = self.num_heads, self.head_dim
    per_layer_cache = cache_positions = cache_valid = None
    if cache is not None:
      per_layer_cache = tuple(a.reshape(self.depth, b, -1, heads, head_dim)
                              for a in (cache.k, cache.v))
      cache_positions = layers.token_positions(kv_cache_lib.frame_positions(cache), gh, gw)
      cache_valid = kv_cache_lib.frame_valid(cache)
    shared = (cond, text, positions, cache_positions, cache_valid)
    sow = self.is_mutable_collection(BLOCK_TOKENS) and not self.is_initializing()
    block = Block
    if self.remat_policy != "none":
      # Under scan the loop already keeps XLA from merging the recomputation with the forward.
      block = nn.remat(block, policy=getattr(jax.checkpoint_policies, self.remat_policy),
                       prevent_cse=not self.scan_layers)
    block_args = (self.width, heads, self.mlp_ratio, self.attention_impl, self.routing_top_k,
                  self.dtype, mask, sow)
    if self.scan_layers:
      # One traced block for all `depth`: compile time does not grow with depth.
      block = nn.scan(block, variable_axes={"params": 0, "intermediates": 0},
                      split_rngs={"params": True}, in_axes=(0,) + (nn.broadcast,) * len(shared),
                      length=self.depth, metadata_params={nn.PARTITION_NAME: SCANNED_AXIS})
      x, outputs = block(*block_args, name=SCANNED_BLOCKS)(x, per_layer_cache, *shared)
      k, v = outputs[:2]
      tokens = tuple(outputs[2]) if sow else ()
    else:
      per_block = []
      for i in range(self.depth):
        layer_cache = None if cache is None else tuple(a[i] for a in per_layer_cache)
        x, outputs = block(*block_args, name=f"block_{i}")(x, layer_cache, *shared)
        per_block.append(outputs)
      k, v = (jnp.stack([o[j] for o in per_block]) for j in (0, 1))
      tokens = tuple(o[2] for o in per_block) if sow else ()
    if sow:
      self.sow(BLOCK_TOKENS, "blocks", tokens, init_fn=tuple, reduce_fn=lambda old, new: old + new)
    new_kv = tuple(a.reshape(self.depth, b, f, gh * gw, heads, head_dim) for a in (k, v))

    # Frames before outputs_from are read only as keys and values (a teacher-forcing history).
    x, cond = x[:, outputs_from:], cond[:, outputs_from:]
    x_bfhwc, t_bf = x_bfhwc[:, outputs_from:], t_bf[:, outputs_from:]
    if previous_bfhwc is not None:
      previous_bfhwc = previous_bfhwc[:, outputs_from:]
    # A warp outputs each pixel's displacement (rows, columns), after its residual if it has one.
    out_channels = c
    if self.prediction == "warp":
      out_channels = c + 2 if self.warp_residual else 2
    if self.fine_patch:
      x = FineDecoder(p, self.fine_patch, self.fine_width, self.fine_depth, self.head_dim,
                      self.mlp_ratio, self.attention_impl, self.dtype, out_channels,
                      name="fine_decoder")(
          x, cond, x_bfhwc, previous_bfhwc if self.previous_frame_input else None)
    else:
      x = unpatchify(final_layer(x, cond, p * p * out_channels, self.dtype), p, h, w)
    x = x.astype(jnp.float32)
    prediction = self.prediction
    if prediction == "residual":
      x, prediction = x + previous_bfhwc.astype(jnp.float32), "data"
    elif prediction == "warp":
      displacement = x[..., -2:]
      if self.warp_sigma:
        displacement = warp_lib.smooth(displacement, self.warp_sigma)
      moved = warp_lib.warp(previous_bfhwc, displacement)
      x, prediction = (x[..., :c] + moved if self.warp_residual else moved), "data"
    velocity = flow.velocity_from_prediction(prediction, x, x_bfhwc, t_bf)
    return velocity, new_kv


def patchify(x_bfhwc, patch: int):
  """[B, F, H, W, C] -> [B, F, (H / patch) * (W / patch), patch * patch * C]: each token one
  patch, row-major over the patch grid."""
  b, f, h, w, c = x_bfhwc.shape
  return x_bfhwc.reshape(b, f, h // patch, patch, w // patch, patch, c).transpose(
      0, 1, 2, 4, 3, 5, 6).reshape(b, f, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(tokens_bftd, patch: int, height: int, width: int):
  """The inverse of patchify: [B, F, T, patch * patch * C] -> [B, F, height, width, C]."""
  b, f, _, d = tokens_bftd.shape
  c = d // (patch * patch)
  gh, gw = height // patch, width // patch
  return tokens_bftd.reshape(b, f, gh, gw, patch, patch, c).transpose(
      0, 1, 2, 4, 3, 5, 6).reshape(b, f, height, width, c)


def final_layer(x_bftd, cond_bfd, features: int, dtype):
  """AdaLN-zero modulated LayerNorm, then a zero-initialised linear map to `features` per token
  (the DiT's output layer): [B, F, T, width] -> [B, F, T, features]."""
  width = x_bftd.shape[-1]
  shift, scale = jnp.split(
      layers.dense(2 * width, ("embed", "modulation"), kernel_init=nn.initializers.zeros,
                   dtype=dtype, name="final_adaln")(nn.silu(cond_bfd)), 2, axis=-1)
  x = layers.modulate(nn.LayerNorm(use_scale=False, use_bias=False, dtype=dtype)(x_bftd),
                      shift, scale)
  return layers.dense(features, ("embed", "patch"), kernel_init=nn.initializers.zeros,
                      dtype=dtype, name="unpatch")(x)


class FineDecoder(nn.Module):
  """Decodes the trunk's patch tokens at a finer patch side, per frame (an hourglass's upward
  half: HDiT, Crowson et al. 2024, and U-ViT's long skips).

  Each trunk token (a `patch`-side patch) becomes (patch / fine_patch)^2 tokens of width
  `width`, one per `fine_patch`-side sub-patch, to which the sub-patch of the noisy input (and of
  the previous frame) is added; `depth` blocks then attend within the frame only
  (SlidingWindow(F, 1) over its sub-patch tokens, 2D RoPE) and a final layer maps each to its
  pixels, `out_channels` each (C, or C + 2 with a warp's displacement). Why: where two objects
  overlap, one 8x8 token holds both and its linear unpatchify gives a blur, even at low noise
  where the noisy input nearly is the answer (docs/overlap_denoising.py); sub-patch tokens that
  read the input at their own resolution can keep the two apart. It works frame by frame,
  so causality, the KV cache (trunk tokens only) and routing are unchanged.
  """

  patch: int
  fine_patch: int
  width: int
  depth: int
  head_dim: int
  mlp_ratio: float
  attention_impl: str
  dtype: jnp.dtype
  out_channels: int

  @nn.compact
  def __call__(self, x_bftd, cond_bfd, x_t_bfhwc, previous_bfhwc=None):
    """x_bftd [B, F, gh * gw, trunk width], cond_bfd [B, F, trunk width], x_t_bfhwc (and, if
    given, previous_bfhwc) [B, F, H, W, C] -> [B, F, H, W, out_channels] in the compute dtype."""
    b, f, h, w, _ = x_t_bfhwc.shape
    fp, r = self.fine_patch, self.patch // self.fine_patch
    gh, gw = h // self.patch, w // self.patch
    fh, fw = gh * r, gw * r
    x = nn.LayerNorm(use_scale=False, use_bias=False, dtype=self.dtype, name="trunk_norm")(x_bftd)
    x = layers.dense(r * r * self.width, ("embed", "fine"), dtype=self.dtype, name="split")(x)
    # Each trunk token's r x r sub-tokens, laid out on the fine grid.
    x = unpatchify(x, r, fh, fw).reshape(b, f, fh * fw, self.width)
    pixels = x_t_bfhwc if previous_bfhwc is None else jnp.concatenate(
        [x_t_bfhwc, previous_bfhwc], axis=-1)
    x = x + layers.dense(self.width, ("patch", "fine"), dtype=self.dtype, name="pixels_in")(
        patchify(pixels, fp).astype(self.dtype))
    cond = layers.dense(self.width, ("embed", "fine"), dtype=self.dtype, name="cond")(cond_bfd)
    # Each frame attends to itself only, every frame at position 0: the blocks never mix frames.
    # (Not frames as batch entries of one frame each: XLA:CPU's library fusions ran the
    # [B * F, 1, T, D] layout's gradient reductions about 20x slower, at jax 0.10.2.)
    positions = layers.token_positions(jnp.zeros((f,)), fh, fw)
    for i in range(self.depth):
      x, _ = Block(self.width, self.width // self.head_dim, self.mlp_ratio, self.attention_impl,
                   0, self.dtype, masks.SlidingWindow(f, 1), name=f"block_{i}")(
          x, None, cond, None, positions, None, None)
    x = final_layer(x, cond, fp * fp * self.out_channels, self.dtype)
    return unpatchify(x, fp, h, w)


def previous_frames(history_bfhwc, chunk: int, *, within_history: bool):
  """The `previous_bfhwc` input for frames laid out like `history_bfhwc`.

  within_history: the history frames themselves, each reading the frame just before it (a chunk
  is written to the cache clean, so its frames may read each other). Otherwise frames being
  denoised, which read the last clean frame before their chunk.
  """
  b, n = history_bfhwc.shape[:2]
  shifted = jnp.concatenate([jnp.zeros_like(history_bfhwc[:, :1]), history_bfhwc[:, :-1]], 1)
  if within_history:
    return shifted
  chunk_start = (jnp.arange(n) // chunk) * chunk
  return shifted[:, chunk_start]
