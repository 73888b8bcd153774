"""Uploaded images, checked before they cost anything: base64 (or a data URL) to bytes, the pixel count
read from the header before decoding, then decoded within a longer side. The HTTP server and the Gradio
app both take their uploads through here; errors are `UploadError`s worded for the person uploading."""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

from PIL import Image, UnidentifiedImageError

from clipseg_jax import preprocess


class UploadError(ValueError):
  """An upload refused, with a message for the person who sent it (over HTTP: a 400)."""


class UploadTooLarge(UploadError):
  """An image too large to decode (over HTTP: a 413)."""


def decode_base64(data) -> bytes:
  """A base64 image, optionally a data URL ("data:image/png;base64,...") -> its bytes."""
  if not isinstance(data, str) or not data:
    raise UploadError("no image given")
  if data.startswith("data:"):
    _, comma, data = data.partition(",")
    if not comma:
      raise UploadError("the image data URL has no ',' before its base64 data")
  try:
    raw = base64.b64decode(data, validate=True)
  except (binascii.Error, ValueError) as e:
    raise UploadError(f"the image is not valid base64: {e}") from e
  if not raw:
    raise UploadError("the image is empty")
  return raw


def check_pixels(raw: bytes, max_pixels: int):
  """Refuse an image whose header says it decodes to more than `max_pixels` (nothing is decoded)."""
  try:
    with Image.open(io.BytesIO(raw)) as im:
      width, height = im.size
  except Image.DecompressionBombError as e:
    raise UploadTooLarge(f"the image is too large to decode safely: {e}") from e
  except (UnidentifiedImageError, OSError, ValueError) as e:
    raise UploadError(f"cannot read the upload as an image: {without_reprs(e)}") from e
  if width * height > max_pixels:
    raise UploadTooLarge(
      f"the image is {width}x{height} ({width * height / 1e6:.1f} megapixels); the limit is "
      f"{max_pixels / 1e6:g} megapixels: downscale it first"
    )


def decode_upload(raw: bytes, max_side: int | None = None) -> tuple[Image.Image, list[str]]:
  """An uploaded image file's bytes -> (RGB image within `max_side`, notes for people, such as a
  downscaling). Large JPEGs are decoded at reduced scale directly."""
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
      image = preprocess.read_image(io.BytesIO(raw), "the upload", max_side)
    except ValueError as e:
      raise UploadError(without_reprs(e)) from None
  return image, [str(w.message) for w in caught]


def without_reprs(error) -> str:
  """An error's text without Python object reprs (PIL names the buffer: `<_io.BytesIO object at 0x...>`)."""
  return re.sub(r"<[\w.]+ object at 0x[0-9a-fA-F]+>", "the data", str(error))
