"""Prompts: visual prompt engineering on (image, mask) pairs and text/visual interpolation.

`crop_blur_highlight` is the paper's best visual prompt (Table 2): blur the background (Gaussian,
sigma 3), darken it (x 0.1), crop to the mask's box with 10% context each side, pad square, resize.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageFilter

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


def blur_highlight(image: np.ndarray, mask: np.ndarray, sigma: float = BLUR_SIGMA,
                   factor: float = BACKGROUND_FACTOR) -> np.ndarray:
  """Background blurred and darkened, object untouched (uint8 HxWx3)."""
  blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(sigma)), np.float32)
  out = np.where(mask[..., None], image.astype(np.float32), blurred * factor)
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def mask_box(mask: np.ndarray, context: float = CONTEXT) -> tuple[int, int, int, int]:
  """(top, left, bottom, right) of the mask, widened by `context` of its size on each side."""
  rows, cols = np.nonzero(mask)
  if rows.size == 0:
    return 0, 0, mask.shape[0], mask.shape[1]
  top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
  dh, dw = int(round((bottom - top) * context)), int(round((right - left) * context))
  return (max(0, top - dh), max(0, left - dw), min(mask.shape[0], bottom + dh),
          min(mask.shape[1], right + dw))


def pad_square(image: np.ndarray) -> np.ndarray:
  h, w = image.shape[:2]
  s = max(h, w)
  out = np.zeros((s, s) + image.shape[2:], image.dtype)
  top, left = (s - h) // 2, (s - w) // 2
  out[top:top + h, left:left + w] = image
  return out


def crop_blur_highlight(image, mask, size: int = IMAGE_SIZE) -> np.ndarray:
  """The paper's `crop_blur_highlight352`: uint8 [size, size, 3] support image."""
  rgb = np.asarray(to_rgb(image))
  m = as_mask(mask, rgb.shape[:2])
  out = blur_highlight(rgb, m)
  top, left, bottom, right = mask_box(m)
  out = pad_square(out[top:bottom, left:right])
  return np.asarray(Image.fromarray(out).resize((size, size), Image.BILINEAR))


def interpolate(text_embeddings, visual_embeddings, weight):
  """`w * text + (1 - w) * visual`, the paper's image-text interpolation (w scalar or per sample)."""
  w = jnp.asarray(weight, jnp.float32)
  if w.ndim == 1:
    w = w[:, None]
  return w * text_embeddings + (1.0 - w) * visual_embeddings
