"""CLIPSeg rd64-uni-refined: the complex transposed-convolution head, 50k iterations.

timojl/clipseg experiments/phrasecut.yaml `rd64-uni-refined` (`complex_trans_conv: True`, T_max 50000),
otherwise as rd64_uni: extract_layers [3, 7, 9] as the yaml trains (the released refined file loads with
(3, 6, 9)), decoder dropout 0.1 (the yaml notes the released refined model differs from this row only in its
transformer dropout), bf16 compute (`common.paper()`).
"""

from clipseg_jax.configs import common


def get_config():
  c = common.paper()
  c.model.use_complex_transposed_convolution = True
  c.total_steps = 50_000
  return c
