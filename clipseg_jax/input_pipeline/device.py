"""The PhraseCut+ pixel work on the accelerator: the crops' resize, visual prompt engineering and casts
inside the jitted step.

With `PCPlusOptions.device_augment` the loader's workers stop after the cheap host work (decode, crop
search, the masks' nearest resize, the support's mask box) and ship uint8 crops padded to a fixed
buffer with their sizes (`pcplus.PCPlusRawTransform`); `finish` turns such a batch into the stream
step's batch (clipseg_jax.input_pipeline.loader documents it) with jnp: the original's
align_corners=True bilinear resize of each crop (`preprocess.resize_aligned`, gathered with indices
from the traced size), then, on the support, the same recipe as `clipseg_jax.prompts.visual_prompt`
(ImageNet normalisation, OpenCV's 15 x 15 Gaussian blur with reflect-101 borders, the blend, the box
crop, zero padding to a square, torch's nearest resize), in float32, vmapped over the batch. The host
computes the blur in float64; the two agree to float32 rounding (tests/test_pipeline_device.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from clipseg_jax import preprocess, prompts

# What the raw (device_augment) loader ships per sample, beside input_ids, attention_mask, text_weight
# (B = `pcplus.crop_buffer`, S = image size):
#   pixels uint8 [B, B, 3] (the query crop at the top left), pixels_hw int32 [2] (its height, width),
#   mask uint8 [S, S] (0/1, resized), support_pixels uint8 [B, B, 3], support_hw int32 [2],
#   support_mask uint8 [S, S], support_box int32 [4] (top, left, bottom, right: `prompts.mask_box` of
#   support_mask), has_support bool.
RAW_KEYS = ("pixels_hw", "support_pixels", "support_hw", "support_mask", "support_box", "has_support")


def check_mode(mode: str, image_size: int):
  """The recipes `finish` runs: every mode whose output is square at `image_size`, or a cropping one."""
  recipe, out = prompts.parse_mode(mode, image_size)
  if recipe.context is None and out != image_size:
    raise ValueError(
      f"device_augment: prompt mode {mode!r} resizes to {out} px without cropping; only cropping modes "
      f"or outputs at the image size ({image_size}) run on the device"
    )
  return recipe, out


def gaussian_blur(image: jax.Array, sigma: float, ksize: int = prompts.KERNEL_SIZE) -> jax.Array:
  """`prompts.gaussian_blur` in jnp: separable float32 kernel along rows then columns, reflect-101
  borders (jnp.pad's "reflect" excludes the edge pixel, as OpenCV's default)."""
  k = prompts.gaussian_kernel(sigma, ksize).astype(np.float32)
  r = ksize // 2
  out = image
  for axis in (1, 0):
    widths = [(0, 0)] * image.ndim
    widths[axis] = (r, r)
    padded = jnp.pad(out, widths, mode="reflect")
    n = out.shape[axis]
    out = sum(float(w) * jax.lax.slice_in_dim(padded, i, i + n, axis=axis) for i, w in enumerate(k))
  return out


def blend(image: jax.Array, seg: jax.Array, recipe: prompts.Recipe) -> jax.Array:
  """`prompts.blend` in jnp (normalised float32 HxWx3 image, 0/1 float32 HxW mask)."""
  s = seg[..., None]
  kinds = {
    "image": lambda: image,
    "black": lambda: jnp.zeros_like(image),
    "overlay": lambda: image * s,
    "highlight": lambda: image * s * 0.85 + 0.15 * image,
    "highlight2": lambda: (image / 2 + 0.1) * s + 0.3 * (image / 2),
    "shape": lambda: jnp.repeat(s, 3, axis=-1),
  }
  if recipe.kind in kinds:
    return kinds[recipe.kind]()
  if recipe.kind != "preprocess":
    raise ValueError(f"unknown recipe kind {recipe.kind!r}")
  blurred = gaussian_blur(image, recipe.blur) if recipe.blur > 0 else image
  out = image * s + recipe.bg_fac * blurred * (1 - s)
  return out - recipe.offset if recipe.offset else out


def opaque(value: int, traced: jax.Array) -> jax.Array:
  """`value` as a float32 divisor XLA cannot fold: it turns a division by a constant into a product
  with the reciprocal, which is not torch's rounding (positions an ulp off, a source index flipped
  where they fall on an integer). `traced` (any traced int) makes it a runtime value."""
  return jnp.where(traced >= 0, value, 1).astype(jnp.float32)


def nearest_indices(n_in: jax.Array, n_out: int) -> jax.Array:
  """`prompts.nearest_indices` for a traced input length: floor(dst * (in / out)) in float32, clipped."""
  scale = n_in.astype(jnp.float32) / opaque(n_out, n_in)
  src = jnp.floor(jnp.arange(n_out, dtype=jnp.float32) * scale).astype(jnp.int32)
  return jnp.minimum(src, n_in - 1)


def crop_pad_resize(image: jax.Array, box: jax.Array, size: int) -> jax.Array:
  """image[top:bottom, left:right], zero-padded to a square (`prompts.pad_square`), nearest-resized to
  `size` (`prompts.resize_nearest`), as one gather with a traced box."""
  top, left, bottom, right = box[0], box[1], box[2], box[3]
  h, w = bottom - top, right - left
  side = jnp.maximum(h, w)
  src = nearest_indices(side, size)
  ys, xs = src - (side - h) // 2, src - (side - w) // 2
  valid = ((ys >= 0) & (ys < h))[:, None] & ((xs >= 0) & (xs < w))[None, :]
  rows = jnp.clip(top + ys, 0, image.shape[0] - 1)
  cols = jnp.clip(left + xs, 0, image.shape[1] - 1)
  return jnp.where(valid[..., None], image[rows[:, None], cols[None, :]], 0.0)


def aligned_taps(n_in: jax.Array, n_out: int):
  """`preprocess.aligned_taps` for a traced input length: (lo, hi, weight of hi), float32 as torch."""
  scale = (n_in - 1).astype(jnp.float32) / opaque(n_out - 1, n_in) if n_out > 1 else jnp.float32(0)
  src = jnp.arange(n_out, dtype=jnp.float32) * scale
  lo = jnp.minimum(src.astype(jnp.int32), n_in - 1)  # src >= 0: truncation is floor
  hi = jnp.minimum(lo + 1, n_in - 1)
  return lo, hi, jnp.clip(src - lo.astype(jnp.float32), 0, 1)


def resize_aligned(image: jax.Array, hw: jax.Array, size: int) -> jax.Array:
  """`preprocess.resize_aligned` of image[:hw[0], :hw[1]] (a padded uint8 buffer, traced sizes) ->
  float32 [size, size, 3] in 0..255. Indices are clamped to the crop: the padding is never read; at
  hw == (size, size) the weights are 0 and this is exactly the identity."""
  lo, hi, w = aligned_taps(hw[0], size)
  w = w[:, None, None]
  rows = image[lo].astype(jnp.float32) * (1 - w) + image[hi].astype(jnp.float32) * w
  lo, hi, w = aligned_taps(hw[1], size)
  w = w[None, :, None]
  return rows[:, lo] * (1 - w) + rows[:, hi] * w


def visual_prompt(pixels: jax.Array, mask: jax.Array, box: jax.Array, mode: str, image_size: int) -> jax.Array:
  """One support: float32 0..255 [S, S, 3] pixels, uint8 [S, S] mask, its `prompts.mask_box` -> float32 prompt."""
  recipe, out = check_mode(mode, image_size)
  blended = blend(preprocess.normalize(pixels), mask.astype(jnp.float32), recipe)
  if recipe.context is None:
    return blended
  return crop_pad_resize(blended, box, out)


def finish(batch: dict, mode: str, image_size: int) -> dict:
  """A raw batch (padded uint8 crops and their sizes, uint8 masks, boxes) -> the stream step's batch:
  pixels float32 0..255 (the step normalises them), mask float32, support float32 ImageNet-normalised
  after prompt engineering (zeros: no support)."""
  resize = jax.vmap(lambda x, hw: resize_aligned(x, hw, image_size))
  one = lambda p, m, b: visual_prompt(p, m, b, mode, image_size)
  s_pixels = resize(batch["support_pixels"], batch["support_hw"])
  support = jax.vmap(one)(s_pixels, batch["support_mask"], batch["support_box"])
  support = jnp.where(batch["has_support"][:, None, None, None], support, 0.0)
  out = {k: v for k, v in batch.items() if k not in RAW_KEYS}
  out["pixels"] = resize(batch["pixels"], batch["pixels_hw"])
  out["mask"] = batch["mask"].astype(jnp.float32)
  out["support"] = support
  return out
