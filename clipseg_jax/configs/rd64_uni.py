"""CLIPSeg rd64-uni on PhraseCut+ (paper Table 1: the released rd64-uni)."""

from clipseg_jax.configs import common


def get_config():
  return common.base()
