"""Building blocks of the DiT: embeddings, 3D rotary positions, the attention layers.

Every parameter carries logical axis names (nn.with_logical_partitioning), and so do the
activations between blocks (nn.with_logical_constraint); config.mesh.rules maps the names to mesh
axes (videoar/train/sharding.py). Parameters: embed (model width), mlp (MLP hidden units),
modulation (AdaLN outputs), heads, head_dim, qkv (the fused q/k/v index), kv (cross-attention's
fused k/v index), patch (a patch's values), time_features, cond (the timestep MLP's hidden
units), vocab (embedding tables), text_features (a text embedding's channels).
Activations: batch, frame, token, activation_embed.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from videoar.attention import masks, ops, routing as routing_lib


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
  """Sinusoidal features of t in [0, 1] (scaled by 1000 so low-noise steps stay distinct)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  angles = 1000.0 * t[..., None].astype(jnp.float32) * freqs
  return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


def rope_split(head_dim: int) -> tuple[int, int, int]:
  """Head channels given to (frame, row, column) rotations; each part is even."""
  spatial = 2 * (head_dim // 6)
  return head_dim - 2 * spatial, spatial, spatial


def token_positions(frame_pos_f: jax.Array, grid_h: int, grid_w: int) -> jax.Array:
  """(frame, row, column) of every token, frame-major: [F * grid_h * grid_w, 3]."""
  f = frame_pos_f.shape[0]
  rows, cols = jnp.meshgrid(jnp.arange(grid_h), jnp.arange(grid_w), indexing="ij")
  spatial = jnp.stack([rows.ravel(), cols.ravel()], axis=-1)
  spatial = jnp.broadcast_to(spatial, (f,) + spatial.shape)
  frames = jnp.broadcast_to(frame_pos_f[:, None, None], (f, spatial.shape[1], 1))
  return jnp.concatenate([frames, spatial], axis=-1).reshape(-1, 3).astype(jnp.float32)


def apply_rope(x_bthd: jax.Array, positions_t3: jax.Array, theta: float = 10_000.0) -> jax.Array:
  """Rotates channel pairs of each head by angles from the token's 3D position."""
  dims = rope_split(x_bthd.shape[-1])
  angles = []
  for axis, d in enumerate(dims):
    if d == 0:
      continue
    freqs = theta ** (-jnp.arange(0, d, 2, dtype=jnp.float32) / d)
    angles.append(positions_t3[:, axis:axis + 1] * freqs)
  angles = jnp.concatenate(angles, axis=-1)[None, :, None, :]  # [1, T, 1, D/2]
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  x = x_bthd.astype(jnp.float32)
  x1, x2 = x[..., 0::2], x[..., 1::2]
  rotated = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
  return rotated.reshape(x.shape).astype(x_bthd.dtype)


def dense(features: int, axes: tuple[str, str], *, kernel_init=nn.linear.default_kernel_init,
          **kwargs) -> nn.Dense:
  """nn.Dense whose kernel [in, out] and bias [out] are named by the logical `axes` (in, out)."""
  return nn.Dense(features, kernel_init=nn.with_logical_partitioning(kernel_init, axes),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), axes[1:]),
                  **kwargs)


class _ReshapedPartitioned(nn.LogicallyPartitioned):
  """Logical axis names of a DenseGeneral parameter. DenseGeneral initialises it flat and unboxes
  it to reshape it; the names fit only the reshaped value, so the flat one is not constrained."""

  def unbox(self, apply_constraint=True):
    return super().unbox(apply_constraint and jnp.ndim(self.value) == len(self.names))


def dense_general_init(init, axes: tuple[str, ...]):
  """`init` for a DenseGeneral kernel or bias whose axes are named `axes`."""
  return lambda *args, **kwargs: _ReshapedPartitioned(init(*args, **kwargs), axes)


def embed(num_embeddings: int, features: int, **kwargs) -> nn.Embed:
  """nn.Embed whose table [num_embeddings, features] is named by the logical axes
  ("vocab", "embed")."""
  return nn.Embed(num_embeddings, features, embedding_init=nn.with_logical_partitioning(
      nn.linear.default_embed_init, ("vocab", "embed")), **kwargs)


def constrain_tokens(x_bftd):
  """Pins the tokens passed between blocks to the mesh (a no-op outside a logical-axis context)."""
  return nn.with_logical_constraint(x_bftd, ("batch", "frame", "token", "activation_embed"))


def constrain_cond(cond_bfd):
  """Pins the per-frame conditioning [B, F, D] to the mesh (a no-op outside a logical-axis
  context)."""
  return nn.with_logical_constraint(cond_bfd, ("batch", "frame", "activation_embed"))


def modulate(x_bftd, shift_bfd, scale_bfd):
  """AdaLN's modulation (DiT, Peebles & Xie 2023): x (1 + scale) + shift, tokens [B, F, T, D]
  by a shift and scale [B, F, D] per frame."""
  return x_bftd * (1.0 + scale_bfd[:, :, None]) + shift_bfd[:, :, None]


class Attention(nn.Module):
  """Self-attention over frames of tokens, optionally over a KV cache of earlier frames.

  Returns the output and this call's (k, v) before rotation, which a sampler writes to its cache.
  """

  num_heads: int
  attention_impl: str = "auto"
  routing_top_k: int = 0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_bftd, *, positions_t3, mask: masks.MaskSpec, cache_kv=None,
               cache_positions_t3=None, cache_frame_valid=None):
    b, f, t, d = x_bftd.shape
    head_dim = d // self.num_heads
    qkv_axes = ("qkv", "heads", "head_dim")
    qkv = nn.DenseGeneral(
        (3, self.num_heads, head_dim), dtype=self.dtype, name="qkv",
        kernel_init=dense_general_init(nn.linear.default_kernel_init, ("embed",) + qkv_axes),
        bias_init=dense_general_init(nn.initializers.zeros_init(), qkv_axes))(
            x_bftd.reshape(b, f * t, d))
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    norm_scale = nn.with_logical_partitioning(nn.initializers.ones, ("head_dim",))
    q = nn.RMSNorm(dtype=self.dtype, scale_init=norm_scale, name="q_norm")(q)
    k = nn.RMSNorm(dtype=self.dtype, scale_init=norm_scale, name="k_norm")(k)
    new_kv = (k, v)
    q = apply_rope(q, positions_t3)
    k = apply_rope(k, positions_t3)
    kv_frame_valid = None
    if cache_kv is not None:
      cache_k, cache_v = cache_kv
      cache_k = apply_rope(cache_k.astype(k.dtype), cache_positions_t3)
      k = jnp.concatenate([cache_k, k], axis=1)
      v = jnp.concatenate([cache_v.astype(v.dtype), v], axis=1)
      kv_frame_valid = jnp.concatenate([cache_frame_valid, jnp.ones((f,), bool)])
    routing = routing_lib.Routing(self.routing_top_k) if self.routing_top_k else None
    if routing is not None and self.is_mutable_collection("intermediates"):
      # Only when asked for (analysis, logging): the training step never pays for this.
      selection = routing_lib.select_frames(q, k, mask, routing, tokens_per_frame=t,
                                            kv_frame_valid=kv_frame_valid)
      self.sow("intermediates", "routing_frequency",
               routing_lib.frequency_by_query_and_key(selection, t))
    out = ops.attention(q, k, v, mask, tokens_per_frame=t, kv_frame_valid=kv_frame_valid,
                        routing=routing, impl=self.attention_impl)
    out = nn.DenseGeneral(
        d, axis=(-2, -1), dtype=self.dtype, name="out",
        kernel_init=dense_general_init(nn.linear.default_kernel_init,
                                       ("heads", "head_dim", "embed")),
        bias_init=dense_general_init(nn.initializers.zeros_init(), ("embed",)))(out)
    return out.reshape(b, f, t, d), new_kv


class CrossAttention(nn.Module):
  """Every video token attends to the tokens of a text embedding (dense; texts are short).

  The text is the same for every frame and known before generation starts, so this keeps the
  model causal over frames and the sampler's cache holds nothing of it. The output projection
  starts at zero: a model begins as if it had no text, as AdaLN-zero begins every block at the
  identity. zero_output=False starts it at the default initialisation instead (a discriminator's
  register tokens, models/discriminator.py, must read the video from the first step).
  """

  num_heads: int
  dtype: jnp.dtype = jnp.float32
  zero_output: bool = True

  @nn.compact
  def __call__(self, x_bftd, text_bld):
    b, f, t, d = x_bftd.shape
    head_dim = d // self.num_heads
    q_axes = ("heads", "head_dim")
    q = nn.DenseGeneral(
        (self.num_heads, head_dim), dtype=self.dtype, name="q",
        kernel_init=dense_general_init(nn.linear.default_kernel_init, ("embed",) + q_axes),
        bias_init=dense_general_init(nn.initializers.zeros_init(), q_axes))(
            x_bftd.reshape(b, f * t, d))
    kv_axes = ("kv", "heads", "head_dim")
    kv = nn.DenseGeneral(
        (2, self.num_heads, head_dim), dtype=self.dtype, name="kv",
        kernel_init=dense_general_init(nn.linear.default_kernel_init, ("embed",) + kv_axes),
        bias_init=dense_general_init(nn.initializers.zeros_init(), kv_axes))(text_bld)
    norm_scale = nn.with_logical_partitioning(nn.initializers.ones, ("head_dim",))
    q = nn.RMSNorm(dtype=self.dtype, scale_init=norm_scale, name="q_norm")(q)
    k = nn.RMSNorm(dtype=self.dtype, scale_init=norm_scale, name="k_norm")(kv[:, :, 0])
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits / math.sqrt(head_dim), axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(self.dtype), kv[:, :, 1])
    out = nn.DenseGeneral(
        d, axis=(-2, -1), dtype=self.dtype, name="out",
        kernel_init=dense_general_init(
            nn.initializers.zeros if self.zero_output else nn.linear.default_kernel_init,
            ("heads", "head_dim", "embed")),
        bias_init=dense_general_init(nn.initializers.zeros_init(), ("embed",)))(out)
    return out.reshape(b, f, t, d)
