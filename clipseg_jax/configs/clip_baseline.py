"""The original's CLIPDenseBaseline on PhraseCut: timojl/clipseg experiments/phrasecut.yaml
`baseline3-vit16-phrasecut` (models/clipseg.py `CLIPDenseBaseline`).

CLIP's activation after block 9 (`extract_layer=9`), reduced to 64, FiLM-conditioned, then the `reduce2` MLP
(Linear 64->64, ReLU, Linear 64->64) and the 16x16 transposed convolution; no transformer blocks (so no
dropout). The row trains on plain PhraseCut: text only (`mix: False`: raw phrases), no negatives. bf16 compute
(the yaml's AMP). Exports: this project's own format only (transformers' CLIPSeg and the original's released
file layout have no baseline).
"""

from clipseg_jax.configs import common


def get_config():
  c = common.paper()
  c.model.extract_layers = (9,)
  c.model.use_decoder_blocks = False
  c.model.reduce2_dim = 64
  c.model.decoder_dropout = 0.0
  c.data.pcplus.visual_prompts = False
  c.data.pcplus.q_neg = 0.0
  c.data.pcplus.templates = ("{}",)
  return c
