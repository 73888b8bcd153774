"""CLIP-Deconv baseline: FiLM, a linear projection and the transposed convolution, no transformer blocks
(bf16 compute as the yamls' AMP; see clip_baseline for the original's CLIPDenseBaseline with its MLP)."""

from clipseg_jax.configs import common


def get_config():
  c = common.paper()
  c.model.extract_layers = (9,)
  c.model.use_decoder_blocks = False
  c.model.decoder_dropout = 0.0  # no blocks: nothing to drop
  return c
