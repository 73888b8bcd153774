"""Transformer building blocks shared by the CLIP towers (pre-LN) and the CLIPSeg decoder (post-LN).

Submodule names follow Hugging Face (`self_attn.q_proj`, `mlp.fc1`, `layer_norm1`, ...) so that weight
conversion is a rename table (see `clipseg_jax.weights.hf`).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def quick_gelu(x):
  # CLIP's activation. `jax.nn.gelu` differs from it by up to 5e-3: not interchangeable.
  return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS = {
  "quick_gelu": quick_gelu,
  "gelu": functools.partial(jax.nn.gelu, approximate=False),
  "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
  "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
  "relu": jax.nn.relu,
}


def activation(name: str):
  try:
    return ACTIVATIONS[name]
  except KeyError:
    raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}") from None


def layer_norm(eps: float, name: str, dtype=None) -> nn.LayerNorm:
  # Two-pass variance as torch computes it; Flax's default E[x^2]-E[x]^2 loses ~1e-5 on CLIP's
  # residual stream, whose per-token mean is far from zero.
  return nn.LayerNorm(epsilon=eps, use_fast_variance=False, name=name, dtype=dtype)


class Attention(nn.Module):
  """Multi-head self-attention, computed like HF's eager path (scale after q.k, softmax in float32)."""

  num_heads: int
  dtype: jnp.dtype | None = None
  # On CPU, one head at a time (see `_by_head`). Worth it for CLIP's wide blocks; the small decoder
  # trains faster with all heads at once (the loop's backward costs more than the cache saves).
  by_head_on_cpu: bool = False
  # Dropout on the attention probabilities while training (torch's `MultiheadAttention(dropout=p)`).
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x, bias=None, deterministic: bool = True):
    width = x.shape[-1]
    head_dim = width // self.num_heads
    dense = functools.partial(nn.Dense, width, dtype=self.dtype)
    split = lambda t: t.reshape(*t.shape[:-1], self.num_heads, head_dim)
    q = split(dense(name="q_proj")(x))
    k = split(dense(name="k_proj")(x))
    v = split(dense(name="v_proj")(x))
    if self.dropout_rate and not deterministic:  # the probabilities themselves are needed: the eager path
      drop = nn.Dropout(self.dropout_rate, deterministic=False)
      out = eager_attention(q, k, v, bias, probs_fn=drop)
    elif self.dtype is not None and jnp.dtype(self.dtype) in REDUCED_PRECISION:
      out = fused_attention(q, k, v, bias)
    elif self.by_head_on_cpu and jax.default_backend() == "cpu":
      out = jax.lax.map(lambda a: eager_attention(*a), _by_head(q, k, v, bias))  # [H, ..., T, 1, d]
      out = jnp.moveaxis(out[..., 0, :], 0, -2)
    else:
      out = eager_attention(q, k, v, bias)
    return dense(name="out_proj")(out.reshape(x.shape))


def eager_attention(q, k, v, bias=None, probs_fn=None):
  """[..., T, H, d] -> [..., T, H, d] as HF's eager path: scale after q.k, softmax in float32.
  `probs_fn` transforms the probabilities [..., H, T, T] before they weight the values (dropout)."""
  scores = jnp.einsum("...qhd,...khd->...hqk", q, k) * q.shape[-1] ** -0.5
  if bias is not None:
    scores = scores + bias
  probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
  if probs_fn is not None:
    probs = probs_fn(probs)
  # Heads-major product, then one transpose: XLA:CPU runs "...hqk,...khd->...qhd" as a dot with a
  # strided output (the product of one ViT-B/16 block at 352: 8.6 ms that way, 2.3 ms this way).
  return jnp.swapaxes(jnp.einsum("...hqk,...khd->...hqd", probs, v), -3, -2)


def _by_head(q, k, v, bias):
  """Operands of `eager_attention` split into one slice per head along a new leading axis. On CPU,
  one head at a time keeps its [T, T] scores in cache: a ViT-B/16 block at 352 takes 34 ms instead
  of 36 for one image, 36 ms instead of 45 per image for four."""
  split = lambda t: jnp.moveaxis(t, -2, 0)[..., None, :]  # [..., T, H, d] -> [H, ..., T, 1, d]
  heads = q.shape[-2]
  if bias is not None:  # [..., H or 1, T, T] -> [H, ..., 1, T, T]
    bias = jnp.moveaxis(jnp.broadcast_to(bias, (*bias.shape[:-3], heads, *bias.shape[-2:])), -3, 0)
    bias = bias[..., None, :, :]
  return split(q), split(k), split(v), bias


REDUCED_PRECISION = (jnp.bfloat16, jnp.float16)


def fused_attention(q, k, v, bias=None):
  """softmax(q.k / sqrt(d) + bias) v through `jax.nn.dot_product_attention`: cuDNN's fused (flash)
  kernel on GPUs, which never writes the [heads, T, T] scores to memory; XLA's formula elsewhere.
  Only for reduced precision: float32 keeps the eager formula above, bit-close to PyTorch. Any number of
  leading batch dimensions (e.g. the decoder's [images, prompts, ...]): the kernel takes one, so they are
  flattened into it."""
  lead = q.shape[:-3]
  if len(lead) > 1:
    heads, t, s = q.shape[-2], q.shape[-3], k.shape[-3]
    q, k, v = (x.reshape((-1,) + x.shape[-3:]) for x in (q, k, v))
    if bias is not None:
      bias = jnp.broadcast_to(bias, lead + (heads, t, s)).reshape(-1, heads, t, s)
    out = fused_attention(q, k, v, bias)
    return out.reshape(lead + out.shape[-3:])
  if bias is not None:
    # float32's minimum overflows to -inf in float16, and a fully masked row would become NaN.
    bias = jnp.maximum(bias, jnp.finfo(q.dtype).min).astype(q.dtype)
  if jax.default_backend() == "gpu":
    try:
      return jax.nn.dot_product_attention(q, k, v, bias, implementation="cudnn")
    except (ValueError, NotImplementedError) as e:  # what JAX raises for shapes/versions cuDNN lacks
      logging.getLogger(__name__).info("cuDNN attention unavailable (%s); using XLA's", e)
  return jax.nn.dot_product_attention(q, k, v, bias)


class MLP(nn.Module):
  intermediate_size: int
  act: str
  dtype: jnp.dtype | None = None
  dropout_rate: float = 0.0  # on the hidden activations while training (torch's encoder layer `dropout`)

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    h = nn.Dense(self.intermediate_size, dtype=self.dtype, name="fc1")(x)
    h = activation(self.act)(h)
    if self.dropout_rate:
      h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
    return nn.Dense(x.shape[-1], dtype=self.dtype, name="fc2")(h)


class EncoderLayer(nn.Module):
  """CLIP block, pre-LN: x + MHA(LN1(x)), then + MLP(LN2(x)). `config`: a Text- or VisionConfig."""

  config: Any
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x, bias=None):
    cfg = self.config
    x = x + Attention(cfg.num_attention_heads, self.dtype, by_head_on_cpu=True, name="self_attn")(
      layer_norm(cfg.layer_norm_eps, "layer_norm1", self.dtype)(x), bias
    )
    h = layer_norm(cfg.layer_norm_eps, "layer_norm2", self.dtype)(x)
    return x + MLP(cfg.intermediate_size, cfg.hidden_act, self.dtype, name="mlp")(h)


class DecoderLayer(nn.Module):
  """CLIPSeg decoder block, post-LN (torch `nn.TransformerEncoderLayer` defaults): LN(x + MHA(x)),
  then LN(x + MLP(x)). Always ReLU: HF's `decoder_hidden_act` field is not what its code runs.

  `dropout_rate` (torch's default 0.1, active while the original trained) is applied where torch applies
  it, only when `deterministic` is False: on the attention probabilities, on the attention branch before
  the residual sum (`dropout1`), on the FFN's hidden ReLU activations (`dropout`) and on the FFN branch
  before its residual sum (`dropout2`); all inverted (kept values scaled by 1 / (1 - p))."""

  num_heads: int
  intermediate_size: int
  eps: float
  dtype: jnp.dtype | None = None
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    rate = self.dropout_rate
    drop = lambda h: nn.Dropout(rate)(h, deterministic=deterministic) if rate else h
    attn = Attention(self.num_heads, self.dtype, dropout_rate=rate, name="self_attn")(x, deterministic=deterministic)
    x = layer_norm(self.eps, "layer_norm1", self.dtype)(x + drop(attn))
    mlp = MLP(self.intermediate_size, "relu", self.dtype, dropout_rate=rate, name="mlp")(x, deterministic=deterministic)
    return layer_norm(self.eps, "layer_norm2", self.dtype)(x + drop(mlp))


class Encoder(nn.Module):
  """A stack of pre-LN blocks returning the residual stream after each (HF `hidden_states[1:]`);
  `depth` runs only the first blocks."""

  config: Any
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x, bias=None, depth: int | None = None):
    states = []
    for i in range(self.config.num_hidden_layers if depth is None else depth):
      x = EncoderLayer(self.config, self.dtype, name=f"layers_{i}")(x, bias)
      states.append(x)
    return states


class Patchify(nn.Module):
  """Conv2d with stride == kernel == patch, written as one matmul over non-overlapping patches.

  Kernel layout (p, p, C_in, C_out) is Flax's Conv layout (torch weight `.transpose(2, 3, 1, 0)`).
  """

  features: int
  patch: int
  use_bias: bool = True
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x):  # [B, H, W, C] -> [B, H/p, W/p, features]
    p = self.patch
    # A stride-p convolution (torch's too) never reads the last h % p rows and w % p columns.
    x = x[:, : x.shape[1] // p * p, : x.shape[2] // p * p]
    b, h, w, c = x.shape
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (p, p, c, self.features))
    x = x.reshape(b, h // p, p, w // p, p, c)
    dtype = self.dtype or x.dtype
    y = jnp.einsum("bhiwjc,ijcd->bhwd", x.astype(dtype), kernel.astype(dtype))
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(dtype)
    return y


class Unpatchify(nn.Module):
  """ConvTranspose2d with stride == kernel: each token becomes a p x p patch (no overlap, no flip).

  Kernel layout (p, p, C_out, C_in): torch weight [C_in, C_out, p, p] `.transpose(2, 3, 1, 0)`, which is
  what Flax's `ConvTranspose(transpose_kernel=True)` expects too.
  """

  features: int
  patch: int
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x):  # [B, h, w, C] -> [B, h*p, w*p, features]
    b, h, w, c = x.shape
    p = self.patch
    kernel = self.param("kernel", nn.initializers.lecun_normal(in_axis=-1, out_axis=-2), (p, p, self.features, c))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    dtype = self.dtype or x.dtype
    # A plain matmul, then the interleave: asked for "bhiwjo" directly, XLA:CPU's dot writes a strided
    # output (the refined decoder's forward for 4 images at 352: 84 ms that way, 64 ms this way).
    y = jnp.einsum("bhwc,ijoc->bhwijo", x.astype(dtype), kernel.astype(dtype)) + bias.astype(dtype)
    return y.transpose(0, 1, 3, 2, 4, 5).reshape(b, h * p, w * p, self.features)
