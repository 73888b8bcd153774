"""CLIPSeg = frozen CLIP + conditional decoder (HF `CLIPSegForImageSegmentation`), as Flax Linen.

Every method is a pure function of (params, inputs) through `apply(..., method=...)`; the stages are
exposed separately so callers can share the image work across prompts.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from clipseg_jax.config import ClipSegConfig
from clipseg_jax.models.clip import CLIP
from clipseg_jax.models.decoder import Decoder


class ClipSegModel(nn.Module):
  config: ClipSegConfig
  dtype: jnp.dtype | None = None
  decoder_dropout: float = 0.0  # training only: see `Decoder.dropout_rate` (off unless deterministic=False)

  def setup(self):
    self.clip = CLIP(self.config, self.dtype)
    self.decoder = Decoder(self.config, self.dtype, self.decoder_dropout)

  def __call__(
    self, pixel_values, input_ids=None, attention_mask=None, conditional_pixel_values=None, conditional_embeddings=None
  ):
    """HF's forward: NHWC normalized pixels + one kind of condition -> dict of logits [B, H, W],
    conditional_embeddings [B, E] and pooled_output [B, E] (projected CLS of the query image)."""
    states, pooled = self.clip.vision_model(pixel_values)
    cond = self.conditional_embeddings(input_ids, attention_mask, conditional_pixel_values, conditional_embeddings)
    activations = [states[i] for i in self.config.extract_layers]
    logits = self.decoder(self.decoder.reduce(activations), cond)
    return {"logits": logits, "conditional_embeddings": cond, "pooled_output": self.clip.visual_projection(pooled)}

  def conditional_embeddings(
    self, input_ids=None, attention_mask=None, conditional_pixel_values=None, conditional_embeddings=None
  ):
    given = [x is not None for x in (input_ids, conditional_pixel_values, conditional_embeddings)]
    if sum(given) != 1:
      raise ValueError("condition on exactly one of input_ids, conditional_pixel_values or conditional_embeddings")
    if conditional_embeddings is not None:
      return conditional_embeddings
    # CLIP is frozen: no gradient flows into it from the condition.
    if input_ids is not None:
      return jax.lax.stop_gradient(self.clip.text_embeds(input_ids, attention_mask))
    return jax.lax.stop_gradient(self.clip.image_embeds(conditional_pixel_values))

  def encode_image(self, pixel_values):
    """Query image -> reduced decoder inputs (deepest first), shared by all prompts of the image.
    Runs the vision blocks only up to the deepest extracted one."""
    return self.decoder.reduce([jax.lax.stop_gradient(a) for a in self.activations(pixel_values)])

  def activations(self, pixel_values):
    """Query image -> raw CLIP activations at `extract_layers` (what feature caching stores)."""
    states, _ = self.clip.vision_model(pixel_values, depth=self.config.vision_depth)
    return [states[i] for i in self.config.extract_layers]

  def decode_activations(self, activations, cond, deterministic: bool = True):
    """Raw (or cached) CLIP activations and [B, E] conditions -> logits [B, H, W] (training:
    deterministic=False with a 'dropout' rng turns the decoder's dropout on)."""
    return self.decoder(self.decoder.reduce(activations), cond, deterministic)

  def text_embeddings(self, input_ids, attention_mask=None):
    return self.clip.text_embeds(input_ids, attention_mask)

  def visual_embeddings(self, pixel_values):
    return self.clip.image_embeds(pixel_values)

  def decode(self, reduced, cond):
    return self.decoder(reduced, cond)


def init_params(config: ClipSegConfig, rng=None, image_size: int | None = None) -> dict:
  """Random parameters (plain nested dict) for `config`."""
  rng = jax.random.PRNGKey(0) if rng is None else rng
  size = image_size or config.vision_config.image_size
  pixels = jnp.zeros((1, size, size, config.vision_config.num_channels), jnp.float32)
  ids = jnp.zeros((1, 4), jnp.int32)
  return ClipSegModel(config).init(rng, pixels, input_ids=ids)["params"]
