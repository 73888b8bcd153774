"""CLIPSeg rd64-uni on a CLIP ViT-B/32 backbone (PhraseCut+).

ViT-B/32 has ViT-B/16's depth (12 blocks), so the original code's training layers [3, 7, 9] carry over
unchanged (timojl/clipseg experiments/*.yaml train every model with `extract_layers: [3, 7, 9]`). At 352 px
the 32-px patches give an 11 x 11 grid (B/16: 22 x 22); the position embeddings (7 x 7 at 224 px) are
resized bicubically. The refined head, if enabled, upsamples 8 x 4 = 32.
"""

from clipseg_jax.configs import common


def get_config():
  c = common.paper()
  c.model.clip = "openai/clip-vit-base-patch32"  # or an OpenCLIP B/32 in HF layout, e.g.
  # "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" (gelu instead of quick_gelu: read from its config.json)
  c.model.extract_layers = (3, 7, 9)
  c.model.transposed_convolution_kernels = (8, 4)
  return c
