"""Zero-shot PASCAL training: timojl/clipseg experiments/pascal_0shot.yaml `rd64-uni-zsPAIRS`
(`--config pascal_zeroshot:PAIRS`; default 5, the yaml's `rd64-uni-zs5`; `rd64-uni-zs2`: 2).

PhraseCut+ without the phrases naming the first PAIRS zero-shot class pairs or their WordNet hyponyms (the
original's `remove_classes: [zs, PAIRS]`: 5 pairs = the 10 unseen classes cow, motorbike, aeroplane, sofa, cat,
tvmonitor, train, bottle, chair, pottedplant), text and visual prompts mixed (w ~ U(0, 0.5)), negatives 0.2,
prompts `text_and_crop_blur_highlight352`. extract_layers [3, 7, 9] as the yaml trains (released weights load
with (3, 6, 9)), decoder dropout 0.1, bf16 compute (`common.paper()`). The published phrasecut.py imports
the pair list from datasets/pascal_zeroshot.py, where it is commented out; its commented value is used.
"""

from clipseg_jax.configs import common

# The zero-shot class pairs, unseen-2 .. unseen-10 (= input_pipeline.heldout.ZERO_SHOT_PAIRS)
PAIRS = (
  ("cow", "motorbike"),
  ("aeroplane", "sofa"),
  ("cat", "tvmonitor"),
  ("train", "bottle"),
  ("chair", "pottedplant"),
)


def get_config(pairs: str = "5"):
  n = int(pairs)
  if n not in range(1, len(PAIRS) + 1):
    raise ValueError(f"the zero-shot split removes 1-{len(PAIRS)} class pairs, got {n}")
  c = common.paper()
  c.data.heldout_classes = tuple(name for pair in PAIRS[:n] for name in pair)
  c.data.heldout_rule = "wordnet"
  c.data.pcplus.visual_prompts = True
  c.data.pcplus.mix_max = 0.5
  c.data.pcplus.q_neg = 0.2
  return c
