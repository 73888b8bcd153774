"""The CLIPSeg decoder (paper Fig. 2): reduce CLIP activations, FiLM-condition, 3 post-LN blocks, unpatchify.

Split in two so that work shared by all prompts of an image is done once: `reduce` depends only on the
image; `__call__` (FiLM onward) depends on the prompt. Leading batch dims broadcast, so reduced
activations of shape [N, 1, T, D] and conditions of shape [1, P, E] decode N x P masks.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from clipseg_jax.config import ClipSegConfig
from clipseg_jax.models.layers import DecoderLayer, Unpatchify


class Decoder(nn.Module):
  config: ClipSegConfig
  dtype: jnp.dtype | None = None
  # Training only (a hyper-parameter, not part of the model's config): dropout inside the decoder blocks
  # where torch's nn.TransformerEncoderLayer applies it (its default 0.1 was on while the original
  # trained); active only when called with deterministic=False.
  dropout_rate: float = 0.0

  def setup(self):
    cfg = self.config
    d = cfg.reduce_dim
    dense = lambda name: nn.Dense(d, dtype=self.dtype, name=name)
    self.film_mul = dense("film_mul")
    self.film_add = dense("film_add")
    self.reduces = [dense(f"reduces_{i}") for i in range(cfg.decoder_depth)]
    self.layers = [
      DecoderLayer(
        cfg.decoder_num_attention_heads,
        cfg.decoder_intermediate_size,
        cfg.vision_config.layer_norm_eps,
        self.dtype,
        self.dropout_rate,
        name=f"layers_{i}",
      )
      for i in range(cfg.decoder_depth if cfg.use_decoder_blocks else 0)
    ]
    if cfg.reduce2_dim is not None:  # CLIPDenseBaseline: names keep the nn.Sequential's indices
      self.reduce2 = [
        nn.Dense(cfg.reduce2_dim, dtype=self.dtype, name="reduce2_0"),
        nn.Dense(d, dtype=self.dtype, name="reduce2_2"),
      ]
    p = cfg.vision_config.patch_size
    if cfg.use_complex_transposed_convolution:
      # Names keep the indices of HF's nn.Sequential (1 and 3 are the ReLUs). Kernels: transformers'
      # (p // 4, p // 4) unless the config names two whose product is p (e.g. 7 x 2 for patch 14).
      k1, k2 = cfg.head_kernels
      self.head = [
        nn.Conv(d, (3, 3), padding=1, dtype=self.dtype, name="transposed_convolution_0"),
        Unpatchify(d // 2, k1, self.dtype, name="transposed_convolution_2"),
        Unpatchify(1, k2, self.dtype, name="transposed_convolution_4"),
      ]
    else:
      self.head = [Unpatchify(1, p, self.dtype, name="transposed_convolution")]

  def reduce(self, activations):
    """Vision activations in `extract_layers` order -> reduced tokens, deepest first."""
    return [reduce(a) for reduce, a in zip(self.reduces, activations[::-1])]

  def __call__(self, reduced, cond, deterministic: bool = True):
    """Reduced activations (deepest first) and [..., E] conditions -> logits [..., H, W].
    `deterministic=False` (training) turns the blocks' dropout on (a 'dropout' rng is then needed)."""
    a = None
    for i, r in enumerate(reduced):
      a = r if a is None else r + a
      if i == self.config.conditional_layer:
        a = self.film_mul(cond)[..., None, :] * a + self.film_add(cond)[..., None, :]
        if self.config.reduce2_dim is not None:
          a = self.reduce2[1](jax.nn.relu(self.reduce2[0](a)))
      if self.layers:
        a = self.layers[i](a, deterministic)
    return self.upsample(a)

  def upsample(self, tokens):
    """[..., 1 + g*g, D] decoder tokens -> [..., g*p, g*p] logits (the CLS token is dropped)."""
    lead, (t, d) = tokens.shape[:-2], tokens.shape[-2:]
    g = int(round((t - 1) ** 0.5))
    x = tokens[..., 1:, :].reshape(-1, g, g, d)
    if len(self.head) == 1:
      x = self.head[0](x)
    else:
      conv, up1, up2 = self.head
      x = up2(jax.nn.relu(up1(jax.nn.relu(conv(x)))))
    return x.reshape(*lead, *x.shape[1:3])
