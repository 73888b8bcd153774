"""The CLIPDenseBaseline's COCO-20i training, one fold: timojl/clipseg experiments/coco.yaml
`bl64-7K-vit16-cbh-neg0.2-coco-FOLD` (`--config coco20i_baseline:FOLD`, FOLD 0-3; default 0).

As coco20i (hsnet's train episodes, text mixed with the support's prompt, 7000 steps) with support negatives
0.2 and the baseline model (block 9, reduce 64, reduce2 MLP 64, no decoder blocks, so no dropout).
"""

from clipseg_jax.configs import coco20i


def get_config(fold: str = "0"):
  c = coco20i.fold_config(int(fold), negative_prob=0.2)
  c.model.extract_layers = (9,)
  c.model.use_decoder_blocks = False
  c.model.reduce2_dim = 64
  c.model.decoder_dropout = 0.0
  return c
