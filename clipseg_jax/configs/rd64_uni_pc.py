"""CLIPSeg trained on PhraseCut without the "+" (text prompts only, no negatives)."""

from clipseg_jax.configs import common


def get_config():
  c = common.base()
  c.data.pcplus.visual_prompts = False
  c.data.pcplus.q_neg = 0.0
  return c
