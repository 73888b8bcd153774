"""CLIPSeg rd64-uni-novis: timojl/clipseg experiments/phrasecut.yaml `rd64-uni-novis`.

PhraseCut with negatives (0.2) but no visual prompts (`with_visual: False`, `mix: False`): the phrase goes to
CLIP as it is (no templates: the original samples them only when mixing, training.py). extract_layers
[3, 7, 9] as the yaml trains (released weights load with (3, 6, 9)), decoder dropout 0.1, bf16 compute
(`common.paper()`).
"""

from clipseg_jax.configs import common


def get_config():
  c = common.paper()
  c.data.pcplus.visual_prompts = False
  c.data.pcplus.q_neg = 0.2
  c.data.pcplus.templates = ("{}",)
  return c
