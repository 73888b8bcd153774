"""CLIP-Deconv baseline: FiLM, a linear projection and the transposed convolution, no transformer blocks."""

from clipseg_jax.configs import common


def get_config():
  c = common.base()
  c.model.extract_layers = (9,)
  c.model.use_decoder_blocks = False
  return c
