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


def overlay(image, probs: np.ndarray, labels=None, first_color: int = 0) -> Image.Image:
  """Colour each prompt's probability map over the image ([P, H, W] or [H, W]); label with a legend.
  Prompt i gets palette colour `first_color + i`."""
  base = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, np.float32)
  probs = np.asarray(probs, np.float32)
  probs = probs[None] if probs.ndim == 2 else probs
  colors = [PALETTE[(first_color + i) % len(PALETTE)] for i in range(len(probs))]
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


def slug(text: str, limit: int = 40) -> str:
  s = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
  return s[:limit] or "prompt"


def mask_grid(image, probs: np.ndarray, labels, height: int = 200) -> Image.Image:
  """The image, then each prompt's map in its own colour over it, side by side, captioned."""
  image = image.convert("RGB") if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
  probs = np.asarray(probs, np.float32)
  tiles = [("image", image)] + [
    (label, overlay(image, p, first_color=i)) for i, (label, p) in enumerate(zip(labels, probs))
  ]
  width = max(1, round(image.width * height / image.height))
  grid = Image.new("RGB", (len(tiles) * (width + 4), height + 18), (255, 255, 255))
  draw = ImageDraw.Draw(grid)
  for k, (label, tile) in enumerate(tiles):
    grid.paste(tile.resize((width, height), Image.BILINEAR), (k * (width + 4), 0))
    draw.text((k * (width + 4) + 2, height + 3), str(label)[:40], fill=(0, 0, 0))
  return grid
