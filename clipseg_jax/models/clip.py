"""The frozen CLIP towers CLIPSeg reads from: vision (query activations, visual prompts) and text."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from clipseg_jax.config import ClipSegConfig, TextConfig, VisionConfig
from clipseg_jax.models.layers import Encoder, Patchify, layer_norm
from clipseg_jax.models.posemb import resize_position_embedding


class VisionEmbeddings(nn.Module):
  config: VisionConfig
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, pixel_values):  # NHWC
    cfg = self.config
    d = cfg.hidden_size
    patches = Patchify(d, cfg.patch_size, use_bias=False, dtype=self.dtype, name="patch_embedding")(pixel_values)
    b, gh, gw, _ = patches.shape
    cls = self.param("class_embedding", nn.initializers.normal(d**-0.5), (d,))
    pos = nn.Embed(cfg.grid_size**2 + 1, d, name="position_embedding").embedding
    # HF interpolates whenever the grid differs from the one the embeddings were trained at.
    pos = resize_position_embedding(pos, gh)
    tokens = jnp.concatenate(
      [jnp.broadcast_to(cls.astype(patches.dtype), (b, 1, d)), patches.reshape(b, gh * gw, d)], axis=1
    )
    return tokens + pos.astype(patches.dtype)


class VisionTransformer(nn.Module):
  """HF `CLIPSegVisionModel`. Returns the residual stream after each block run, and the CLS
  embedding after `post_layernorm` when all blocks ran."""

  config: VisionConfig
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, pixel_values, depth: int | None = None):
    cfg = self.config
    x = VisionEmbeddings(cfg, self.dtype, name="embeddings")(pixel_values)
    x = layer_norm(cfg.layer_norm_eps, "pre_layrnorm", self.dtype)(x)
    states = Encoder(cfg, self.dtype, name="encoder")(x, depth=depth)
    post = layer_norm(cfg.layer_norm_eps, "post_layernorm", self.dtype)
    if self.is_initializing() or len(states) == cfg.num_hidden_layers:
      return states, post(states[-1][:, 0])
    return states, None


class TextEmbeddings(nn.Module):
  config: TextConfig

  @nn.compact
  def __call__(self, input_ids):
    cfg = self.config
    tok = nn.Embed(cfg.vocab_size, cfg.hidden_size, name="token_embedding")
    pos = nn.Embed(cfg.max_position_embeddings, cfg.hidden_size, name="position_embedding")
    return tok(input_ids) + pos.embedding[: input_ids.shape[-1]]


class TextTransformer(nn.Module):
  """HF `CLIPSegTextModel`: causal pre-LN transformer pooled at the end-of-text token."""

  config: TextConfig
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, input_ids, attention_mask=None):
    cfg = self.config
    n = input_ids.shape[-1]
    if n > cfg.max_position_embeddings:
      raise ValueError(f"prompt of {n} tokens exceeds max_position_embeddings={cfg.max_position_embeddings}")
    x = TextEmbeddings(cfg, name="embeddings")(input_ids)
    if self.dtype is not None:
      x = x.astype(self.dtype)
    allowed = jnp.tril(jnp.ones((n, n), bool))[None]
    if attention_mask is not None:
      allowed = allowed & attention_mask.astype(bool)[:, None, :]
    # Additive mask with the dtype's minimum, as HF eager: a fully masked row becomes uniform, not NaN.
    bias = jnp.where(allowed, 0.0, jnp.finfo(jnp.float32).min)[:, None].astype(jnp.float32)
    states = Encoder(cfg, self.dtype, name="encoder")(x, bias)
    x = layer_norm(cfg.layer_norm_eps, "final_layer_norm", self.dtype)(states[-1])
    if cfg.eos_token_id == 2:
      # Legacy HF configs: the EOS token is the largest id in each sequence.
      eos = jnp.argmax(input_ids, axis=-1)
    else:
      eos = jnp.argmax((input_ids == cfg.eos_token_id).astype(jnp.int32), axis=-1)
    return jnp.take_along_axis(x, eos[:, None, None], axis=1)[:, 0]


class CLIP(nn.Module):
  """HF `CLIPSegModel`: both towers and their projections into the joint 512-d space."""

  config: ClipSegConfig
  dtype: jnp.dtype | None = None

  def setup(self):
    cfg = self.config
    self.vision_model = VisionTransformer(cfg.vision_config, self.dtype)
    self.text_model = TextTransformer(cfg.text_config, self.dtype)
    self.visual_projection = nn.Dense(cfg.projection_dim, use_bias=False, dtype=self.dtype)
    self.text_projection = nn.Dense(cfg.projection_dim, use_bias=False, dtype=self.dtype)
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(cfg.logit_scale_init_value), ())

  def __call__(self, pixel_values, input_ids, attention_mask=None):
    """Both embeddings (used for init and for CLIP's own contrastive objective)."""
    return self.image_embeds(pixel_values), self.text_embeds(input_ids, attention_mask)

  def image_states(self, pixel_values, depth: int | None = None):
    return self.vision_model(pixel_values, depth)

  def image_embeds(self, pixel_values):
    _, pooled = self.vision_model(pixel_values)
    return self.visual_projection(pooled)

  def text_embeds(self, input_ids, attention_mask=None):
    return self.text_projection(self.text_model(input_ids, attention_mask))
