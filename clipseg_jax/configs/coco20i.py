"""One-shot COCO-20i training, one fold: timojl/clipseg experiments/coco.yaml `rd64-7K-vit16-cbh-coco-FOLD`
(`--config coco20i:FOLD`, FOLD 0-3; default 0).

hsnet's train-split episodes on the fold's 60 training classes (input_pipeline/episodes.py, over the prepared
`coco` dataset in hsnet's COCO-20i layout), images resized to 352 without augmentation, the condition a
`shuffle+` template with the class name mixed with the support's `crop_blur_highlight352` prompt, w ~ U(0, 1)
(`mix_text_min: 0.0`), 7000 steps at batch 64, AdamW 1e-3 cosine to 1e-4 over 7000 (T_max 7000), no periodic
evaluation (`val_interval: null`: evaluate with `eval coco20i --fold FOLD`). extract_layers [3, 7, 9], decoder
dropout 0.1, bf16 compute (`common.paper()`). The episodes are made on the host (device_augment off).
The yaml's `rd64-7K-vit16-cbh-neg0.2-coco-FOLD` rows: --config.data.episodes.negative_prob=0.2 (a negative
replaces only the support, by another class's support with an empty mask; text and query mask stay).
The `bl64-7K-vit16-cbh-neg0.2-coco-FOLD` rows: `--config coco20i_baseline:FOLD`.
"""

import ml_collections

from clipseg_jax.configs import common

STEPS = 7000  # the rows' max_iterations and T_max


def fold_config(fold: int, negative_prob: float = 0.0):
  c = common.paper()
  c.total_steps = STEPS
  c.batch_size = 64
  c.eval_every = 0
  c.data.name = "coco"
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.episodes = ml_collections.ConfigDict(dict(kind="coco20i", fold=fold, negative_prob=negative_prob))
  p = c.data.pcplus
  p.image_size = 352
  p.visual_prompts = True
  p.q_neg = 0.0  # COCO's negatives are data.episodes.negative_prob (support only)
  p.mix_max = 1.0  # no mix_text_max in coco.yaml: torch's Uniform(0, 1)
  p.prompt_mode = "crop_blur_highlight"  # at image_size 352: crop_blur_highlight352
  p.templates = common.SHUFFLE_PLUS  # prompt: shuffle+
  p.device_augment = False
  return c


def get_config(fold: str = "0"):
  return fold_config(int(fold))
