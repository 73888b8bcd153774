"""CLIPSeg rd16-uni on PhraseCut+ (reduce_dim 16): timojl/clipseg experiments/ablation.yaml `rd16-uni`.

Otherwise as rd64_uni: extract_layers [3, 7, 9] as the yaml trains (released weights load with (3, 6, 9)),
decoder dropout 0.1, bf16 compute (`common.paper()`).
"""

from clipseg_jax.configs import common


def get_config():
  c = common.paper()
  c.model.reduce_dim = 16
  return c
