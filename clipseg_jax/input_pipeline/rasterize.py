"""Masks from PhraseCut polygons, and COCO's compressed run-length strings (to check them).

COCO masks themselves are drawn by pycocotools (`builders.coco.annotation_mask`), as COCO's API does.
PhraseCut masks are drawn as the original CLIPSeg code draws them (timojl/clipseg
`datasets/phrasecut.py` `PhraseCut.load_sample`): scikit-image's `polygon2mask` on the float vertices
swapped to (y, x), one polygon at a time, the union over every polygon of every instance. (PhraseCut's
own API draws PIL polygons on truncated vertices: up to ~30% more pixels on small shapes.)
"""

from __future__ import annotations

import numpy as np


def polygons_to_mask(polygons, height: int, width: int) -> np.ndarray:
  """Union of polygons (each a list of [x, y], float) as a bool [height, width] mask: per polygon the
  pixels `skimage.draw.polygon2mask` marks for its (y, x) vertices (centres inside; parts outside the
  image clipped)."""
  from skimage.draw import polygon

  mask = np.zeros((height, width), bool)
  for poly in polygons:
    points = np.asarray(poly, np.float64).reshape(-1, 2)
    if len(points):
      rows, cols = polygon(points[:, 1], points[:, 0], (height, width))
      mask[rows, cols] = True
  return mask


def phrasecut_mask(instances, height: int, width: int) -> np.ndarray:
  """PhraseCut `Polygons` (per instance a list of polygons) -> the union of all of them."""
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
