"""Images in, model pixels out, as the reference `CLIPSegProcessor` prepares them: RGB, resize to a
square (aspect not kept, bilinear), /255, ImageNet mean/std (not CLIP's), NHWC float32."""

from __future__ import annotations

import itertools
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SIZE = 352
# Larger images are downscaled (with a warning) before anything else: outputs are maps at the image's
# size, [prompts, H, W] float32, and a 100-megapixel photo would need 400 MB per prompt.
MAX_SIDE = 4096
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")  # what a folder of images holds
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def load_image(path: str | os.PathLike, max_side: int | None = None) -> Image.Image:
  """Open an image file as RGB, EXIF orientation applied, at most `max_side` on its longer side
  (JPEGs are decoded at reduced scale directly); a clear error if it is not an image."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"image not found: {path}")
  if path.stat().st_size == 0:
    raise ValueError(f"cannot read {path} as an image: the file is empty")
  return read_image(path, str(path), max_side)


def read_image(source, what: str = "image", max_side: int | None = None) -> Image.Image:
  """`load_image` for a path or a file object (an upload, say); `what` names it in errors."""
  max_side = max_side or MAX_SIDE
  try:
    with Image.open(source) as im:
      if max(im.size) > max_side:
        im.draft("RGB", (max_side, max_side))  # JPEG: decode at 1/2, 1/4 or 1/8 scale, cheaply
      im.load()
      image = to_rgb(im)
  except Image.DecompressionBombError as e:
    raise ValueError(f"{what} is too large to decode safely ({e}); downscale it first") from e
  except (UnidentifiedImageError, OSError) as e:
    raise ValueError(f"cannot read {what} as an image: {e}") from e
  check_size(image, what)
  return limit_size(image, max_side, what)


def limit_size(image: Image.Image, max_side: int | None = None, what: str = "image") -> Image.Image:
  """`image` downscaled (aspect kept) so its longer side is at most `max_side` (default MAX_SIDE),
  with a warning."""
  max_side = max_side or MAX_SIDE
  if max(image.size) <= max_side:
    return image
  scale = max_side / max(image.size)
  size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
  warnings.warn(
    f"{what} is {image.width}x{image.height}; downscaled to {size[0]}x{size[1]} (max side "
    f"{max_side}): its masks come at that size",
    stacklevel=2,
  )
  return image.resize(size, Image.BILINEAR)


def to_8bit(values: np.ndarray, max_value: int) -> np.ndarray:
  """Integer samples in [0, max_value] -> uint8, scaled by the bit depth (value * 255 / max_value, rounded)."""
  scaled = np.round(np.clip(values.astype(np.float64), 0, max_value) * (255.0 / max_value))
  return scaled.astype(np.uint8)


def _high_depth_to_l(image: Image.Image) -> Image.Image:
  """A 16-bit (`I;16*`) or 32-bit integer (`I`) greyscale image as 8-bit `L`, scaled by its bit depth
  (PIL's own conversion clips at 255, which turns almost every pixel of a 16-bit image white). `I` images
  are how PIL opens 16-bit PNGs: one whose values fit 16 bits is scaled as 16-bit, else as 32-bit."""
  arr = np.asarray(image)
  if image.mode.startswith("I;16"):
    max_value = 65535
  else:
    max_value = 65535 if arr.size == 0 or arr.max() <= 65535 else 2**31 - 1
  return Image.fromarray(to_8bit(arr, max_value), "L")


def to_rgb(image) -> Image.Image:
  """PIL image (any mode; 16-bit ones scaled to 8 bits by their depth) or uint8/uint16 array (HxW,
  HxWx1/3/4; uint16 scaled by 255 / 65535) -> RGB PIL image."""
  if isinstance(image, Image.Image):
    image = ImageOps.exif_transpose(image)
    if image.mode == "I" or image.mode.startswith("I;16"):
      image = _high_depth_to_l(image)
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
      image = image.convert("RGBA")
      background = Image.new("RGBA", image.size, (255, 255, 255, 255))
      image = Image.alpha_composite(background, image)
    return image.convert("RGB")
  arr = np.asarray(image)
  if arr.dtype == np.uint16:
    arr = to_8bit(arr, 65535)
  if arr.dtype != np.uint8:
    raise ValueError(f"image arrays must be uint8 (or uint16) HxWx3, got dtype {arr.dtype}")
  if arr.ndim == 3 and arr.shape[-1] == 1:
    arr = arr[..., 0]
  if arr.ndim == 2:
    return Image.fromarray(arr, "L").convert("RGB")
  if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
    raise ValueError(f"image arrays must be HxW, HxWx3 or HxWx4, got shape {arr.shape}")
  return to_rgb(Image.fromarray(arr, "RGBA" if arr.shape[-1] == 4 else "RGB"))


def check_size(image: Image.Image, what: str = "image"):
  if image.width == 0 or image.height == 0:
    raise ValueError(f"{what} has zero size ({image.width}x{image.height})")


def normalize(pixels_uint8):
  """uint8 -> ImageNet-normalised float32; numpy or jax arrays (the train step normalises on device)."""
  return (pixels_uint8.astype(np.float32) / 255.0 - MEAN) / STD


def check_threshold(threshold):
  """None (probabilities), or a probability in [0, 1] to binarise at (bools and NaN refused)."""
  if threshold is not None and (
    isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0
  ):
    raise ValueError(f"threshold must be a probability in [0, 1] or None, got {threshold!r}")


def check_batch_size(batch_size):
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def prepare(images) -> list[Image.Image]:
  """Images of any mode or uint8 arrays -> RGB PIL images, each checked and within MAX_SIDE (downscaled
  with a warning): what predict feeds the processor."""
  images = [to_rgb(im) for im in images]
  for im in images:
    check_size(im)
  return [limit_size(im) for im in images]


def batches(images, batch_size: int):
  """`prepare`d lists of up to `batch_size` images from any iterable (a generator of files, say)."""
  for chunk in chunks(images, batch_size):
    yield prepare(chunk)


def sigmoid(logits, xp=np):
  """Logits -> probabilities, overflow-free for large |x| (`xp`: numpy, or jax.numpy inside jitted code)."""
  return 0.5 * (xp.tanh(0.5 * logits) + 1.0)


def chunks(items, size: int):
  """Lists of up to `size` consecutive items of any iterable (the last one shorter)."""
  items = iter(items)
  while chunk := list(itertools.islice(items, size)):
    yield chunk


def denormalize(pixels) -> np.ndarray:
  """Normalised pixels (`normalize`'s output) -> uint8 RGB for people to look at."""
  return np.clip(np.round((np.asarray(pixels, np.float32) * STD + MEAN) * 255.0), 0, 255).astype(np.uint8)


def resize_square(image, size: int, *, nearest: bool = False) -> np.ndarray:
  """A PIL image or an HxW(x3) array -> [size, size(, 3)], aspect not kept: bilinear for images (as
  `CLIPSegProcessor`), nearest for masks (as the original's data code). Bool masks stay bool."""
  is_bool = isinstance(image, np.ndarray) and image.dtype == bool
  im = (
    image
    if isinstance(image, Image.Image)
    else Image.fromarray(np.asarray(image, np.uint8) if is_bool else np.asarray(image))
  )
  out = np.asarray(im.resize((size, size), Image.NEAREST if nearest else Image.BILINEAR))
  return out.astype(bool) if is_bool else out


def pixels(image, size: int = IMAGE_SIZE) -> np.ndarray:
  """One image -> [size, size, 3] normalized float32."""
  image = to_rgb(image)
  check_size(image)
  return normalize(resize_square(image, size))


def batch_pixels(images, size: int = IMAGE_SIZE) -> np.ndarray:
  return np.stack([pixels(im, size) for im in images])


def bilinear_matrix(n_in: int, n_out: int, align_corners: bool = False) -> np.ndarray:
  """[n_out, n_in] matrix of torch's bilinear resize (no antialias). align_corners=False (torch's
  default, HF's post-processing): src = (dst + 0.5) * in / out - 0.5, clamped at 0; align_corners=True
  (the original CLIPSeg evaluation's resize_pred): src = dst * (in - 1) / (out - 1), 0 when out == 1."""
  dst = np.arange(n_out)
  d32 = dst.astype(np.float32)  # source positions in float32, as torch's CPU kernel does for float32 maps
  if align_corners:
    src = (np.float32(n_in - 1) / np.float32(n_out - 1) if n_out > 1 else np.float32(0)) * d32
  else:
    # torch's kernel computes scale * (dst + 0.5) - 0.5 as one fused multiply-add (one rounding to float32):
    # two roundings move src by an ulp, 6e-5 of a pixel's value when downscaling 500 -> 352
    scale = np.float32(n_in) / np.float32(n_out)
    src = np.maximum((np.float64(scale) * (d32 + np.float32(0.5)) - 0.5).astype(np.float32), 0)
  src = src.astype(np.float64)
  lo = np.minimum(np.floor(src).astype(int), n_in - 1)
  hi = np.minimum(lo + 1, n_in - 1)
  frac = src - lo
  m = np.zeros((n_out, n_in))
  np.add.at(m, (dst, lo), 1 - frac)
  np.add.at(m, (dst, hi), frac)
  return m


def resize_map(prob: np.ndarray, height: int, width: int, *, align_corners: bool = False) -> np.ndarray:
  """[..., h, w] maps resized to [..., height, width] by torch's bilinear interpolate (no antialias).
  align_corners=False (default) is what `predict` uses, as HF's post-processing does; the metrics and
  the evaluation protocols pass align_corners=True, as the original CLIPSeg evaluation
  (`FixedIntervalMetrics(resize_pred=True)`) does. Two float32 matmuls (within 2e-7 of float64), all
  maps of a stack at once."""
  prob = np.asarray(prob, np.float32)
  if prob.shape[-2:] == (height, width):
    return prob
  rows = bilinear_matrix(prob.shape[-2], height, align_corners).astype(np.float32)
  cols = bilinear_matrix(prob.shape[-1], width, align_corners).astype(np.float32)
  return rows @ prob @ cols.T


def aligned_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(lo, hi, weight of hi) along one axis for torch's bilinear `interpolate(align_corners=True)`:
  src = dst * (in - 1) / (out - 1) in float32 (scale 0 when out == 1), lo = floor(src), hi = lo + 1,
  both clamped to the last index, weight src - lo clipped to [0, 1]."""
  scale = np.float32(n_in - 1) / np.float32(n_out - 1) if n_out > 1 else np.float32(0)
  src = np.arange(n_out, dtype=np.float32) * scale
  lo = np.minimum(src.astype(np.int64), n_in - 1)  # src >= 0: truncation is floor
  hi = np.minimum(lo + 1, n_in - 1)
  return lo, hi, np.clip(src - lo.astype(np.float32), 0, 1)


def resize_aligned(image, size: int) -> np.ndarray:
  """HxWx3 (uint8 or float, 0..255) -> float32 [size, size, 3] in 0..255: torch's bilinear
  `F.interpolate(..., mode="bilinear", align_corners=True)` on float pixels, no antialiasing, as the
  original CLIPSeg training data (datasets/phrasecut.py `load_sample`) resized its crops. Training only:
  inference and evaluation keep `resize_square` (the reference processor's resize)."""
  image = np.asarray(image)
  lo, hi, w = aligned_taps(image.shape[0], size)
  w = w[:, None, None]
  rows = image[lo] * (1 - w) + image[hi] * w  # uint8 * float32 -> float32: no separate casts
  lo, hi, w = aligned_taps(image.shape[1], size)
  w = w[None, :, None]
  return (rows[:, lo] * (1 - w) + rows[:, hi] * w).astype(np.float32, copy=False)
