"""CLIPSeg rd64-uni-refined: the complex transposed-convolution head, 50k iterations."""

from clipseg_jax.configs import common


def get_config():
  c = common.base()
  c.model.use_complex_transposed_convolution = True
  c.total_steps = 50_000
  return c
