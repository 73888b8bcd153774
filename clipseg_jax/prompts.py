"""Prompts: visual prompt engineering on (image, mask) pairs and text/visual interpolation.

Pure functions, shared by training (PhraseCut+ supports) and inference (one-shot prompts). The modes
are the original code's (`blend_image_segmentation` in its datasets/utils.py, most of them through
`img_preprocess` in its evaluation_utils.py), computed the same way: everything happens on the
ImageNet-normalised image in float32, so "darkening" the background pulls it towards normalised 0
(the ImageNet mean colour, not black) and the square padding of cropping modes is 0 as well (mean
grey). The result goes straight into the vision tower.

The `img_preprocess` recipe, in its order:
  1. blur: OpenCV's `GaussianBlur` of the whole normalised image, 15 x 15 kernel, sigma `blur`,
     reflect-101 borders (reimplemented here: `gaussian_kernel`, `gaussian_blur`);
  2. blend: `img * mask + bg_fac * blurred * (1 - mask)`;
  3. cropping modes only: the mask's box widened by `context` of its extent on each side (`mask_box`),
     zero-padded to a square (`pad_square`), nearest-resized as torch's default `F.interpolate`
     (`resize_nearest`).
The paper's best prompt (Table 2) is `crop_blur_highlight352`: blur sigma 3, background x 0.1, 10%
context, 352 px.

Resolution. The original's datasets resize the support to the model's image size (square) and
normalise it before blending. Non-cropping modes do the same here: the image (bilinear,
`preprocess.resize_square`) and the mask (nearest) are resized to `size` x `size` first. Cropping
modes work on the image as given (a caller wanting the original's exact order, as the PhraseCut+
pipeline does, resizes first), so an object keeps its aspect ratio; on a square `size` x `size`
input both orders are the same.

Not supported: the original's `separate*` modes (two outputs), `concat` (4 channels, which the
vision tower cannot take) and `blur_highlight_random` (random recipe).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from PIL import Image

from clipseg_jax import preprocess
from clipseg_jax.preprocess import IMAGE_SIZE, to_rgb

KERNEL_SIZE = 15  # the original's cv2.GaussianBlur(img, (15, 15), blur)
# Largest visual prompt side a mode may ask for ("crop_blur_highlight99999" would allocate ~112 GiB);
# the vision towers take 224-352.
MAX_PROMPT_SIZE = 2048


@dataclasses.dataclass(frozen=True)
class Recipe:
  """One visual prompt mode.

  kind: "preprocess" (blur, blend, optionally crop: the original's `img_preprocess`), or one of the
    direct blends "image" (the normalised image), "black" (zeros), "overlay" (img * seg),
    "highlight" (0.85 img seg + 0.15 img), "highlight2" ((img / 2 + 0.1) seg + 0.3 img / 2),
    "shape" (the mask as three channels, 0/1).
  blur: Gaussian sigma of the background (0: none); bg_fac: the background's factor;
  offset: subtracted from the result; context: crop to the mask's box widened by this much
  (None: no crop); size: a fixed output size (None: the caller's).
  """

  kind: str
  blur: float = 0.0
  bg_fac: float = 1.0
  offset: float = 0.0
  context: float | None = None
  size: int | None = None


MODES = {
  "plain": Recipe("image"),  # the original's mode None
  "image_only": Recipe("image"),
  "image_black": Recipe("black"),
  "overlay": Recipe("overlay"),
  "highlight": Recipe("highlight"),
  "highlight2": Recipe("highlight2"),
  "shape": Recipe("shape"),
  "blur_highlight": Recipe("preprocess", blur=1, bg_fac=0.5, offset=0.01),
  "blur3_highlight": Recipe("preprocess", blur=3, bg_fac=0.5, offset=0.01),
  "blur3_highlight01": Recipe("preprocess", blur=3, bg_fac=0.1, offset=0.01),
  "crop": Recipe("preprocess", blur=1, context=0.1),
  "crop_blur_highlight": Recipe("preprocess", blur=3, bg_fac=0.1, context=0.1),
  "crop_blur_highlight352": Recipe("preprocess", blur=3, bg_fac=0.1, context=0.1, size=352),
}


def as_mask(mask, shape: tuple[int, int]) -> np.ndarray:
  """Bool HxW mask from a bool/uint8/float array or PIL image; must match the image's size."""
  if mask is None:
    raise ValueError("support mask is None: give an HxW array (or image) marking the object")
  if isinstance(mask, Image.Image):
    mask = np.asarray(mask.convert("L"))
  m = np.asarray(mask)
  if m.dtype.kind not in "biuf" or m.ndim not in (2, 3):
    raise ValueError(f"support mask must be an HxW numeric array or image, got {m.dtype} of shape {m.shape}")
  if m.dtype.kind == "f" and not np.all(np.isfinite(m)):
    raise ValueError("support mask holds NaN or infinite values")
  if m.ndim == 3:
    m = m[..., 0]
  if m.shape != tuple(shape):
    raise ValueError(f"support mask is {m.shape[1]}x{m.shape[0]} but its image is {shape[1]}x{shape[0]}")
  return m > (127 if m.dtype == np.uint8 and m.max() > 1 else 0)


def gaussian_kernel(sigma: float, ksize: int = KERNEL_SIZE) -> np.ndarray:
  """OpenCV's `getGaussianKernel(ksize, sigma)` for sigma > 0: exp(-(i - (ksize-1)/2)^2 / (2 sigma^2)),
  scaled to sum 1 (float64; OpenCV filters float32 images with it rounded to float32)."""
  if sigma <= 0 or ksize % 2 == 0:
    raise ValueError(f"need sigma > 0 and an odd kernel size, got sigma={sigma}, ksize={ksize}")
  d = np.arange(ksize, dtype=np.float64) - (ksize - 1) / 2
  g = np.exp(-(d * d) / (2.0 * sigma * sigma))
  return g / g.sum()


def gaussian_blur(image: np.ndarray, sigma: float, ksize: int = KERNEL_SIZE) -> np.ndarray:
  """`cv2.GaussianBlur(image, (ksize, ksize), sigma)` on an HxW(xC) float array: the separable
  kernel along rows then columns, borders reflected without repeating the edge pixel (OpenCV's
  default BORDER_REFLECT_101, numpy's "reflect"). Summed in float64, returned as float32."""
  k = gaussian_kernel(sigma, ksize).astype(np.float32).astype(np.float64)
  r = ksize // 2
  out = np.asarray(image, np.float64)
  for axis in (1, 0):
    n = out.shape[axis]
    widths = [(0, 0)] * out.ndim
    widths[axis] = (r, r)
    padded = np.pad(out, widths, mode="reflect")
    acc = np.zeros_like(out)
    for i, w in enumerate(k):
      acc += w * np.take(padded, np.arange(i, i + n), axis=axis)
    out = acc
  return out.astype(np.float32)


def mask_box(mask: np.ndarray, context: float = 0.1) -> tuple[int, int, int, int]:
  """(top, left, bottom, right) of the mask's bounding box, each side moved out by `context` times
  the box's extent along that axis and truncated to int, clipped to the image (an empty mask: the
  whole image), as the original's `crop_mask`.

  The original finds the column range with `mask.max(0)` but measures its right end from `mask.size(0)`
  (the height) and clips it to the height, and vice versa for rows: for a non-square mask its box is
  shifted by the difference of the sides. Its pipeline only ever passed square supports, where this
  is exact; here each axis uses its own size, which equals the original on square masks and is the
  intended box otherwise.
  """
  h, w = mask.shape
  rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
  if rows.size == 0:
    return 0, 0, h, w
  top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
  dy, dx = bottom - top, right - left
  # Same float arithmetic as the original (e.g. 40 - 0.1 * 30 = 36.99999... -> 36).
  return (
    int(max(0, top - context * dy)),
    int(max(0, left - context * dx)),
    int(min(h, bottom + context * dy)),
    int(min(w, right + context * dx)),
  )


def pad_square(image: np.ndarray, fill: float = 0.0) -> np.ndarray:
  """Pad the shorter side with `fill` (half, rounded down, before; the rest after) to a square."""
  h, w = image.shape[:2]
  s = max(h, w)
  out = np.full((s, s) + image.shape[2:], fill, image.dtype)
  top, left = (s - h) // 2, (s - w) // 2
  out[top : top + h, left : left + w] = image
  return out


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
  """Source indices of torch's `F.interpolate(mode="nearest")`: floor(dst * in / out), the scale and
  the product in float32 as torch computes them on CPU, clipped to the last index."""
  if n_in == n_out:
    return np.arange(n_out)
  scale = np.float32(n_in) / np.float32(n_out)
  src = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
  return np.minimum(src, n_in - 1)


def resize_nearest(image: np.ndarray, size: int) -> np.ndarray:
  """HxW(xC) -> size x size(xC), nearest as torch's default `F.interpolate`."""
  h, w = image.shape[:2]
  return image[nearest_indices(h, size)][:, nearest_indices(w, size)]


def parse_mode(mode: str, size: int | None = None) -> tuple[Recipe, int]:
  """Mode name -> (recipe, output size). A known name may be followed by an output size
  ("crop_blur_highlight224", "blur_highlight96"); otherwise the size is the recipe's own
  (`crop_blur_highlight352`), else `size`, else 352."""
  if not isinstance(mode, str):
    raise ValueError(f"visual prompt mode must be a string (one of {', '.join(MODES)}), got {mode!r}")
  matches = [n for n in MODES if mode.startswith(n) and mode[len(n) :].isdigit()]
  if mode in MODES:
    name, digits = mode, ""
  elif matches:
    name = max(matches, key=len)
    digits = mode[len(name) :]
  else:
    raise ValueError(
      f"unknown visual prompt mode {mode!r}; known: {', '.join(MODES)} (optionally followed by an "
      "output size, e.g. crop_blur_highlight224)"
    )
  recipe = MODES[name]
  if digits:
    out = int(digits)
  else:
    out = recipe.size or size or IMAGE_SIZE
  if not 0 < out <= MAX_PROMPT_SIZE:
    raise ValueError(f"visual prompt size must be in 1..{MAX_PROMPT_SIZE}, got {out} from mode {mode!r}")
  return recipe, out


def blend(image: np.ndarray, seg: np.ndarray, recipe: Recipe) -> np.ndarray:
  """A recipe's blend of a normalised float32 HxWx3 image and a 0/1 float32 HxW mask (no crop)."""
  s = seg[..., None]
  if recipe.kind == "image":
    return image
  if recipe.kind == "black":
    return np.zeros_like(image)
  if recipe.kind == "overlay":
    return image * s
  if recipe.kind == "highlight":
    return image * s * 0.85 + 0.15 * image
  if recipe.kind == "highlight2":
    half = image / 2
    return (half + 0.1) * s + 0.3 * half
  if recipe.kind == "shape":
    return np.repeat(s, 3, axis=-1)
  if recipe.kind == "preprocess":
    blurred = gaussian_blur(image, recipe.blur) if recipe.blur > 0 else image
    out = image * s + recipe.bg_fac * blurred * (1 - s)
    return out - recipe.offset if recipe.offset else out
  raise ValueError(f"unknown recipe kind {recipe.kind!r}")


def crop_prompt(rgb: np.ndarray, mask: np.ndarray, recipe: Recipe, size: int) -> np.ndarray:
  """A cropping mode's recipe on `rgb` (uint8, or float 0..255 as the training crops are): blur, blend,
  crop, pad, resize. Only the box plus the kernel's radius (or up to the image's border, where the
  reflection is the same) is normalised and blurred: identical values, less work."""
  top, left, bottom, right = mask_box(mask, recipe.context)
  r = KERNEL_SIZE // 2 if recipe.blur > 0 else 0
  t0, l0 = max(0, top - r), max(0, left - r)
  b0, r0 = min(mask.shape[0], bottom + r), min(mask.shape[1], right + r)
  window = preprocess.normalize(rgb[t0:b0, l0:r0])
  blended = blend(window, mask[t0:b0, l0:r0].astype(np.float32), recipe)
  crop = blended[top - t0 : bottom - t0, left - l0 : right - l0]
  return resize_nearest(pad_square(crop), size)


def visual_prompt(image, mask, mode: str = "crop_blur_highlight352", size: int | None = None) -> np.ndarray:
  """Visual prompt engineering on (image, mask) -> float32 [s, s, 3], ImageNet-normalised (what the
  vision tower takes). `image`: uint8 HxWx3 array or PIL image, any size; `mask`: HxW, same size."""
  recipe, size = parse_mode(mode, size)
  rgb = np.asarray(to_rgb(image))
  m = as_mask(mask, rgb.shape[:2])
  if recipe.context is not None:
    out = crop_prompt(rgb, m, recipe, size)
  else:
    rgb, m = preprocess.resize_square(rgb, size), preprocess.resize_square(m, size, nearest=True)
    out = blend(preprocess.normalize(rgb), m.astype(np.float32), recipe)
  return np.ascontiguousarray(out, np.float32)


def crop_blur_highlight(image, mask, size: int = IMAGE_SIZE) -> np.ndarray:
  """The paper's best visual prompt (`crop_blur_highlight352` at size 352), normalised float32."""
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


def fill_templates(texts: Sequence[str], templates: Sequence[str]) -> list[str]:
  """Each text in each template, text-major ([t0(x0), t1(x0), ..., t0(x1), ...]), for prompt ensembles;
  a template must hold exactly one `{}`."""
  templates = [templates] if isinstance(templates, str) else list(templates)
  if not templates:
    raise ValueError("templates must not be empty (None: no ensemble)")
  for t in templates:
    if not isinstance(t, str) or "{}" not in t or t.count("{") != 1 or t.count("}") != 1:
      raise ValueError(f"a prompt template must hold exactly one '{{}}' and no other braces, got {t!r}")
  return [t.replace("{}", x) for x in texts for t in templates]
