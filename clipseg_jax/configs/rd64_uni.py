"""CLIPSeg rd64-uni on PhraseCut+ (paper Table 1: the released rd64-uni).

Follows timojl/clipseg experiments/phrasecut.yaml `rd64-uni`: ViT-B/16, reduce_dim 64, visual prompts mixed
with the text (`mix`, w ~ U(0, 0.5)), negatives 0.2, the `shuffle+` templates, AdamW 1e-3 cosine to 1e-4 over
20k steps, batch 64. Trains with the yaml's extract_layers [3, 7, 9] (the released rd64-uni file loads with
(3, 6, 9), its HF config's), decoder dropout 0.1 and bf16 compute (the yaml's AMP): `common.paper()`.
"""

from clipseg_jax.configs import common


def get_config():
  return common.paper()
