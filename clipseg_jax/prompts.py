"""Prompts: visual prompt engineering on (image, mask) pairs and text/visual interpolation.

Pure functions, shared by training (PhraseCut+ supports) and inference (one-shot prompts). The
paper's best visual prompt (Table 2) is `crop_blur_highlight352`: blur the background (Gaussian,
sigma 3), darken it (x 0.1), crop to the mask's box with 10% context each side, pad square, resize
to 352. Other modes switch those operations off one by one (`MODES`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageFilter

from clipseg_jax import preprocess
from clipseg_jax.preprocess import IMAGE_SIZE, to_rgb

BLUR_SIGMA = 3.0
BACKGROUND_FACTOR = 0.1
CONTEXT = 0.1


def as_mask(mask, shape: tuple[int, int]) -> np.ndarray:
  """Bool HxW mask from a bool/uint8/float array or PIL image; must match the image's size."""
  if isinstance(mask, Image.Image):
    mask = np.asarray(mask.convert("L"))
  m = np.asarray(mask)
  if m.ndim == 3:
    m = m[..., 0]
  if m.shape != tuple(shape):
    raise ValueError(f"support mask is {m.shape[1]}x{m.shape[0]} but its image is {shape[1]}x{shape[0]}")
  return m > (127 if m.dtype == np.uint8 and m.max() > 1 else 0)


def background(
  image: np.ndarray, mask: np.ndarray, sigma: float = BLUR_SIGMA, factor: float = BACKGROUND_FACTOR
) -> np.ndarray:
  """Background (outside `mask`) blurred with a Gaussian of `sigma` and scaled by `factor`; the
  object untouched (uint8 HxWx3)."""
  bg = image
  if sigma > 0:
    bg = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(sigma)))
  out = np.where(mask[..., None], image.astype(np.float32), bg.astype(np.float32) * factor)
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def mask_box(mask: np.ndarray, context: float = CONTEXT) -> tuple[int, int, int, int]:
  """(top, left, bottom, right) of the mask, widened by `context` of its size on each side."""
  rows, cols = np.nonzero(mask)
  if rows.size == 0:
    return 0, 0, mask.shape[0], mask.shape[1]
  top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
  dh, dw = int(round((bottom - top) * context)), int(round((right - left) * context))
  return (max(0, top - dh), max(0, left - dw), min(mask.shape[0], bottom + dh), min(mask.shape[1], right + dw))


def pad_square(image: np.ndarray) -> np.ndarray:
  h, w = image.shape[:2]
  s = max(h, w)
  out = np.zeros((s, s) + image.shape[2:], image.dtype)
  top, left = (s - h) // 2, (s - w) // 2
  out[top : top + h, left : left + w] = image
  return out


# name -> (crop to the mask with context, blur the background, darken the background)
MODES = {
  "plain": (False, False, False),
  "highlight": (False, False, True),
  "blur": (False, True, False),
  "blur_highlight": (False, True, True),
  "crop": (True, False, False),
  "crop_highlight": (True, False, True),
  "crop_blur": (True, True, False),
  "crop_blur_highlight": (True, True, True),
}


def parse_mode(mode: str, size: int | None = None) -> tuple[tuple[bool, bool, bool], int]:
  """'crop_blur_highlight352' -> ((True, True, True), 352); a mode without digits uses `size`."""
  name = mode.rstrip("0123456789")
  if name not in MODES:
    raise ValueError(
      f"unknown visual prompt mode {mode!r}; known: {', '.join(MODES)} (optionally "
      "followed by an output size, e.g. crop_blur_highlight352)"
    )
  digits = mode[len(name) :]
  return MODES[name], int(digits) if digits else (size or IMAGE_SIZE)


def visual_prompt(image, mask, mode: str = "crop_blur_highlight352", size: int | None = None) -> np.ndarray:
  """Visual prompt engineering on (image, mask) -> uint8 [s, s, 3] support image."""
  (crop, blur, darken), size = parse_mode(mode, size)
  rgb = np.asarray(to_rgb(image))
  m = as_mask(mask, rgb.shape[:2])
  if crop:  # crop first (with a blur margin) so the blur only touches pixels that are kept
    top, left, bottom, right = mask_box(m)
    margin = int(np.ceil(3 * BLUR_SIGMA)) if blur else 0
    t0, l0 = max(0, top - margin), max(0, left - margin)
    b0, r0 = min(m.shape[0], bottom + margin), min(m.shape[1], right + margin)
    rgb, m = rgb[t0:b0, l0:r0], m[t0:b0, l0:r0]
    inner = (top - t0, left - l0, bottom - t0, right - l0)
  if blur or darken:
    rgb = background(rgb, m, sigma=BLUR_SIGMA if blur else 0.0, factor=BACKGROUND_FACTOR if darken else 1.0)
  if crop:
    rgb = pad_square(rgb[inner[0] : inner[2], inner[1] : inner[3]])
  return preprocess.resize_square(rgb, size)


def crop_blur_highlight(image, mask, size: int = IMAGE_SIZE) -> np.ndarray:
  """The paper's best visual prompt (`crop_blur_highlight352` at size 352)."""
  return visual_prompt(image, mask, "crop_blur_highlight", size)


def interpolate(text_embeddings, visual_embeddings, weight):
  """`w * text + (1 - w) * visual`, the paper's image-text interpolation (w scalar or per sample)."""
  w = jnp.asarray(weight, jnp.asarray(text_embeddings).dtype)
  if w.ndim == 1:
    w = w[:, None]
  return w * text_embeddings + (1.0 - w) * visual_embeddings


@dataclasses.dataclass(frozen=True)
class Mixed:
  """A text prompt and a visual one in one condition: `text_weight * text + (1 - text_weight) * visual`."""

  text: str
  image: Any
  mask: Any
  text_weight: float = 0.5

  def __post_init__(self):
    if not 0.0 <= self.text_weight <= 1.0:
      raise ValueError(f"text_weight must be in [0, 1], got {self.text_weight}")
