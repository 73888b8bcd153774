"""Visual-only PhraseCut: the original's `only_visual` (timojl/clipseg datasets/phrasecut.py; phrasecut.yaml
`vit64-uni` trains it with `mask: crop_blur_highlight352`, on its ViT model at lr 3e-4: here on CLIPSeg).

Only phrases that more than one sample carries are trained on (`data.only_visual`), and the condition is the
support's visual embedding alone (`mix_max` 0: w = 0), its prompt `crop_blur_highlight352`; negatives 0.2.
One difference: the original drew a negative's phrase among all phrases, and one carried by a single sample
had a blank (mean-colour) support; here negatives are drawn among the kept phrases, so their support is a
real image of the other phrase. extract_layers [3, 7, 9] as the yamls train (released weights load with
(3, 6, 9)), decoder dropout 0.1, bf16 compute (`common.paper()`).
"""

from clipseg_jax.configs import common


def get_config():
  c = common.paper()
  c.data.only_visual = True
  c.data.pcplus.visual_prompts = True
  c.data.pcplus.mix_max = 0.0
  c.data.pcplus.q_neg = 0.2
  c.data.pcplus.prompt_mode = "crop_blur_highlight"
  return c
