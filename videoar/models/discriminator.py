"""The GAN discriminator of Self Forcing's GAN variant (spec 4.1): a CausalDiT backbone (the
critic, initialised from the teacher and trained) and a classification head that reads the
backbone's tokens after chosen blocks ("taps") and gives one logit per video.

The head (`Head`), per tap j: a learned register token (N(0, 0.02^2), RMS-normalised when read)
cross-attends to the LayerNorm-ed video tokens after block taps[j] (layers.CrossAttention: q/k
RMS-norm, output added to the register), then an MLP on a LayerNorm, added too; the taps' tokens,
concatenated, go through LayerNorm -> Linear -> SiLU -> Linear -> the logit. The backbone's
tokens come from its BLOCK_TOKENS collection (dit.BLOCK_TOKENS), so the backbone is a plain
CausalDiT with the parameters of one, and its velocity output, computed but unused, is removed by
the compiler.

The discriminator's parameters are {"backbone": CausalDiT variables, "head": Head variables}.
Logical axis names of the head beyond layers.py's: register (the taps' register tokens),
register_embed (the taps' tokens concatenated), logit (the one output); none is sharded.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from videoar.models import dit, layers

REGISTER_INIT_STDDEV = 0.02


def _layer_norm(axes: tuple[str, ...], dtype, name: str) -> nn.LayerNorm:
  """A LayerNorm with scale and bias (the backbone's have neither), named by `axes`."""
  return nn.LayerNorm(dtype=dtype, name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, axes),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes))


class Tap(nn.Module):
  """One register token reading the video tokens after one block: [B, width] from [B, F, T,
  width] and the register [width]."""

  num_heads: int
  mlp_ratio: float = 4.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, register_d, tokens_bftd):
    b, width = tokens_bftd.shape[0], tokens_bftd.shape[-1]
    video = _layer_norm(("embed",), self.dtype, "video_norm")(tokens_bftd.reshape(b, -1, width))
    register = register_d * jax.lax.rsqrt(jnp.mean(jnp.square(register_d)) + 1e-6)
    r = jnp.broadcast_to(register.astype(self.dtype), (b, 1, 1, width))
    r = r + layers.CrossAttention(self.num_heads, self.dtype, zero_output=False,
                                  name="cross_attn")(r, video)
    h = _layer_norm(("embed",), self.dtype, "mlp_norm")(r)
    h = layers.dense(int(width * self.mlp_ratio), ("embed", "mlp"), dtype=self.dtype,
                     name="mlp_in")(h)
    h = layers.dense(width, ("mlp", "embed"), dtype=self.dtype, name="mlp_out")(nn.gelu(h))
    return (r + h).reshape(b, width)


class Head(nn.Module):
  """The classification head: one Tap per entry of `tokens`, then the classifier; a float32
  logit [B] (positive: judged real)."""

  width: int
  num_heads: int
  num_taps: int
  mlp_ratio: float = 4.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens: Sequence[jax.Array]) -> jax.Array:
    if len(tokens) != self.num_taps:
      raise ValueError(f"discriminator Head(num_taps={self.num_taps}) got {len(tokens)} taps")
    registers = self.param(
        "registers", nn.with_logical_partitioning(
            nn.initializers.normal(REGISTER_INIT_STDDEV), ("register", "embed")),
        (self.num_taps, self.width))
    read = [Tap(self.num_heads, self.mlp_ratio, self.dtype, name=f"tap_{j}")(registers[j], x)
            for j, x in enumerate(tokens)]
    h = _layer_norm(("register_embed",), self.dtype, "norm")(jnp.concatenate(read, axis=-1))
    h = layers.dense(self.width, ("register_embed", "embed"), dtype=self.dtype,
                     name="hidden")(h)
    logit = layers.dense(1, ("embed", "logit"), dtype=self.dtype, name="logit")(nn.silu(h))
    return logit[:, 0].astype(jnp.float32)


def head_for(backbone: dit.CausalDiT, num_taps: int) -> Head:
  """The head that reads `num_taps` taps of `backbone` (its width, heads, MLP ratio, dtype)."""
  return Head(backbone.width, backbone.num_heads, num_taps, backbone.mlp_ratio, backbone.dtype)


def init_head(backbone: dit.CausalDiT, num_taps: int, rng: jax.Array):
  """The head's variables, each parameter in an nn.LogicallyPartitioned box (Module.init's);
  they depend on the backbone's width, not on the video's shape."""
  tokens = [jnp.zeros((1, 1, 1, backbone.width), backbone.dtype)] * num_taps
  return head_for(backbone, num_taps).init(rng, tokens)


def block_tokens(backbone: dit.CausalDiT, params, x_bfhwc, t_bf, **kwargs) -> tuple:
  """The backbone's tokens after each block, a tuple of `depth` arrays [B, F, T, width];
  `kwargs` are CausalDiT's (frame_pos_f, mask, conditioning)."""
  _, state = backbone.apply(params, x_bfhwc, t_bf, mutable=[dit.BLOCK_TOKENS], **kwargs)
  return state[dit.BLOCK_TOKENS]["blocks"]


def logits(backbone: dit.CausalDiT, params, x_bfhwc, t_bf, *, taps: Sequence[int],
           **kwargs) -> jax.Array:
  """The discriminator's logits [B] (float32) of videos x_bfhwc at times t_bf [B, F].

  params: {"backbone", "head"}; taps: the blocks (0-indexed, increasing) whose output tokens the
  head reads. `kwargs` are CausalDiT's. Raises ValueError for a tap outside the backbone."""
  if any(not 0 <= i < backbone.depth for i in taps):
    raise ValueError(f"discriminator taps={tuple(taps)} must be blocks in [0, {backbone.depth})")
  blocks = block_tokens(backbone, params["backbone"], x_bfhwc, t_bf, **kwargs)
  return head_for(backbone, len(taps)).apply(params["head"], [blocks[i] for i in taps])
