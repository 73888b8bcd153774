"""CLIP-Deconv baseline: FiLM, a linear projection and the transposed convolution, no transformer blocks."""

from experiments.configs import common


def get_config():
  c = common.base()
  c.model.extract_layers = (9,)
  c.model.decoder_depth = 0
  return c
