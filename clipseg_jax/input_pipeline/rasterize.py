"""Masks from PhraseCut polygons, and COCO's compressed run-length strings (to check them).

COCO masks themselves are drawn by pycocotools (`builders.coco.annotation_mask`), as COCO's API does.
PhraseCut's reference rasterisation (its own API) draws each polygon with PIL `ImageDraw.polygon` on
integer-truncated vertices, fill=1 and outline=1 (boundary included); we do exactly that. A fill
without the boundary loses 10-15% of a thin shape.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def polygons_to_mask(polygons, height: int, width: int) -> np.ndarray:
  """Union of polygons (each a list of [x, y]) as a bool [height, width] mask."""
  canvas = Image.new("L", (width, height), 0)
  draw = ImageDraw.Draw(canvas)
  for poly in polygons:
    points = [(int(x), int(y)) for x, y in poly]
    if points:
      draw.polygon(points, fill=1, outline=1)
  return np.asarray(canvas, bool)


def phrasecut_mask(instances, height: int, width: int) -> np.ndarray:
  """PhraseCut `Polygons`: per instance a list of polygons -> their union."""
  return polygons_to_mask([poly for instance in instances for poly in instance], height, width)


def rle_counts_from_string(s: str) -> list[int]:
  """Decode COCO's compressed RLE string (6-bit chunks, zig-zag-free signed deltas after the 2nd)."""
  counts, p = [], 0
  while p < len(s):
    x, k, more = 0, 0, True
    while more:
      c = ord(s[p]) - 48
      x |= (c & 0x1F) << (5 * k)
      more = bool(c & 0x20)
      p += 1
      k += 1
      if not more and (c & 0x10):
        x |= -1 << (5 * k)
    if len(counts) > 2:
      x += counts[-2]
    counts.append(x)
  return counts
