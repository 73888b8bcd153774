"""CLIPSeg trained on PhraseCut without the "+" (text prompts only, no negatives).

Without visual prompts the original trains with `mix: False`, where the phrase goes to CLIP as it is (its
templates are sampled only when mixing: training.py), so: raw phrases. extract_layers [3, 7, 9] as the
yamls train (released weights load with (3, 6, 9)), decoder dropout 0.1, bf16 compute (`common.paper()`).
"""

from clipseg_jax.configs import common


def get_config():
  c = common.paper()
  c.data.pcplus.visual_prompts = False
  c.data.pcplus.q_neg = 0.0
  c.data.pcplus.templates = ("{}",)
  return c
