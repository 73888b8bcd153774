"""CLIPSeg rd64-uni on a CLIP ViT-L/14 backbone (PhraseCut+).

Extract layers scaled by depth: the original's [3, 7, 9] of 12 blocks (the residual stream after blocks
4, 8 and 10 of 12, 1-based) become the blocks at the same fraction of L/14's 24: block i (0-based) of 12
-> 2 * (i + 1) - 1 of 24, i.e. [7, 15, 19]. Patch 14 does not tile 352 px (25.1 patches): 336 px gives a
whole 24 x 24 grid (364 px: 26 x 26), and is the native size of openai/clip-vit-large-patch14-336, whose
position embeddings then need no resizing. The refined head, if enabled, upsamples 7 x 2 = 14.
"""

from clipseg_jax.configs import common

DEPTH_B16, DEPTH_L14 = 12, 24
PAPER_LAYERS = (3, 7, 9)


def scaled_layers(layers=PAPER_LAYERS, depth: int = DEPTH_L14, base: int = DEPTH_B16) -> tuple[int, ...]:
  """Block indices at the same fraction of a deeper tower: (i + 1) * depth / base - 1."""
  return tuple((i + 1) * depth // base - 1 for i in layers)


def get_config():
  c = common.paper()
  c.model.clip = "openai/clip-vit-large-patch14"  # or "openai/clip-vit-large-patch14-336"
  c.model.extract_layers = scaled_layers()
  c.model.transposed_convolution_kernels = (7, 2)
  c.data.pcplus.image_size = 336
  return c
