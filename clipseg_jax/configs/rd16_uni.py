"""CLIPSeg rd16-uni on PhraseCut+ (reduce_dim 16)."""

from clipseg_jax.configs import common


def get_config():
  c = common.base()
  c.model.reduce_dim = 16
  return c
