"""One-shot PASCAL-5i training, one fold: timojl/clipseg experiments/pascal_1shot.yaml
`rd64-uni-phrasepas5i-FOLD` (`--config pascal5i:FOLD`, FOLD 0-3; default 0).

PhraseCut+ without the phrases that name the fold's test classes or their WordNet hyponyms (the original's
`remove_classes: [pas5i, FOLD]`: classes 5 * FOLD + 1 .. 5 * FOLD + 5, the rule of input_pipeline/heldout.py),
text and visual prompts mixed (w ~ U(0, 0.5)), negatives 0.2, 20k steps. extract_layers [3, 7, 9] as the yaml
trains (released weights load with (3, 6, 9)), decoder dropout 0.1, bf16 compute (`common.paper()`).
The yaml's `rd64-phrasepas5i-FOLD` rows: --config.data.pcplus.q_neg=0 --config.data.pcplus.mix_max=1.
"""

from clipseg_jax.configs import common

# The classes each fold tests (PASCAL VOC labels 5 * FOLD + 1 .. 5 * FOLD + 5; = input_pipeline.heldout.fold_classes)
FOLD_CLASSES = (
  ("aeroplane", "bicycle", "bird", "boat", "bottle"),
  ("bus", "car", "cat", "chair", "cow"),
  ("diningtable", "dog", "horse", "motorbike", "person"),
  ("pottedplant", "sheep", "sofa", "train", "tvmonitor"),
)


def fold_config(fold: int):
  if fold not in range(len(FOLD_CLASSES)):
    raise ValueError(f"PASCAL-5i fold must be 0-{len(FOLD_CLASSES) - 1}, got {fold}")
  c = common.paper()
  c.data.heldout_classes = FOLD_CLASSES[fold]
  c.data.heldout_rule = "wordnet"
  c.data.pcplus.visual_prompts = True
  c.data.pcplus.mix_max = 0.5
  c.data.pcplus.q_neg = 0.2
  return c


def get_config(fold: str = "0"):
  return fold_config(int(fold))
