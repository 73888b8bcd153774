"""The CLIPDenseBaseline's one-shot PASCAL-5i training, one fold: timojl/clipseg experiments/pascal_1shot.yaml
`bl64-phrasepas5i-FOLD` (`--config pascal5i_baseline:FOLD`, FOLD 0-3; default 0).

As pascal5i (the fold's classes and their WordNet hyponyms removed, text mixed with visual prompts) with the
baseline model (block 9, reduce 64, reduce2 MLP 64, no blocks) and the row's settings: no negatives and the
yaml's default mix range w ~ U(0, 1) (no `mix_text_max`). bf16 compute (the yaml's AMP).
"""

from clipseg_jax.configs import pascal5i


def get_config(fold: str = "0"):
  c = pascal5i.fold_config(int(fold))
  c.model.extract_layers = (9,)
  c.model.use_decoder_blocks = False
  c.model.reduce2_dim = 64
  c.model.decoder_dropout = 0.0
  c.data.pcplus.q_neg = 0.0
  c.data.pcplus.mix_max = 1.0
  return c
