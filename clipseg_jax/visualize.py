"""Pictures for people: mask PNGs and coloured overlays."""

from __future__ import annotations

import re

import numpy as np
from PIL import Image, ImageDraw

PALETTE = np.array(
  [
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
  ],
  np.float32,
)
ALPHA = 0.6


def mask_image(prob: np.ndarray) -> Image.Image:
  """Probabilities (or bools) HxW -> 8-bit greyscale PNG-ready image."""
  return Image.fromarray(np.round(np.asarray(prob, np.float32) * 255).astype(np.uint8), "L")


def coverage(mask: np.ndarray) -> float:
  """The share of pixels a mask or probability map calls foreground (above 0.5): what the servers report."""
  return float(np.mean(np.asarray(mask) > 0.5))


def contrast_colors(image: np.ndarray, probs: np.ndarray) -> list[np.ndarray]:
  """A palette colour per prompt that stands out from the image under its mask (the farthest from the
  mask-weighted mean colour, by the "redmean" approximation of perceived distance), each used once."""
  free = list(range(len(PALETTE)))
  colors = []
  for p in probs:
    w = p.sum()
    under = (image * p[..., None]).sum((0, 1)) / w if w > 1e-6 else image.reshape(-1, 3).mean(0)
    best = max(free, key=lambda i: color_distance(PALETTE[i], under))
    colors.append(PALETTE[best])
    free = [i for i in free if i != best] or list(range(len(PALETTE)))
  return colors


def color_distance(a: np.ndarray, b: np.ndarray) -> float:
  """Perceived distance between two RGB colours (0-255), weighting red and blue by the mean red level."""
  r = (a[0] + b[0]) / 2
  d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  return float(np.sqrt((2 + r / 256) * d[0] ** 2 + 4 * d[1] ** 2 + (2 + (255 - r) / 256) * d[2] ** 2))


def overlay(image, probs: np.ndarray, labels=None, colors=None) -> Image.Image:
  """Colour each prompt's probability map over the image ([P, H, W] or [H, W]), by default in a colour that
  contrasts with what lies under it (`contrast_colors`); label with a legend."""
  base = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, np.float32)
  probs = np.asarray(probs, np.float32)
  probs = probs[None] if probs.ndim == 2 else probs
  colors = contrast_colors(base, probs) if colors is None else [np.asarray(c, np.float32) for c in colors]
  out = base.copy()
  for p, color in zip(probs, colors):
    a = ALPHA * p[..., None]
    out = out * (1 - a) + color * a
  im = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
  if labels:
    draw = ImageDraw.Draw(im)
    for i, text in enumerate(labels):
      y = 4 + 14 * i
      draw.rectangle([4, y, 14, y + 10], fill=tuple(int(c) for c in colors[i]))
      draw.text((18, y - 1), str(text), fill=(255, 255, 255), stroke_width=1, stroke_fill=(0, 0, 0))
  return im


def beside(image, picture: Image.Image, gap: int = 4) -> Image.Image:
  """The source image, then `picture` (e.g. its overlay) to its right, on white."""
  image = image.convert("RGB") if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
  out = Image.new("RGB", (image.width + gap + picture.width, max(image.height, picture.height)), (255, 255, 255))
  out.paste(image, (0, 0))
  out.paste(picture.convert("RGB"), (image.width + gap, 0))
  return out


def slug(text: str, limit: int = 40) -> str:
  s = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
  return s[:limit] or "prompt"


def mask_grid(image, probs: np.ndarray, labels, height: int = 200) -> Image.Image:
  """The image, then each prompt's map in its own colour over it, side by side, captioned."""
  image = image.convert("RGB") if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
  probs = np.asarray(probs, np.float32)
  colors = contrast_colors(np.asarray(image, np.float32), probs)  # chosen together: each prompt its own
  tiles = [("image", image)] + [(label, overlay(image, p, colors=[c])) for label, p, c in zip(labels, probs, colors)]
  width = max(1, round(image.width * height / image.height))
  grid = Image.new("RGB", (len(tiles) * (width + 4), height + 18), (255, 255, 255))
  draw = ImageDraw.Draw(grid)
  for k, (label, tile) in enumerate(tiles):
    grid.paste(tile.resize((width, height), Image.BILINEAR), (k * (width + 4), 0))
    draw.text((k * (width + 4) + 2, height + 3), str(label)[:40], fill=(0, 0, 0))
  return grid
