"""Features and helpers shared by the builders.

Referring datasets (synthetic, PhraseCut, folder) store one record per image with all its phrases
and one mask per phrase, so an image is stored once however many phrases name it; `raw_examples`
and the loader flatten them to (image, phrase) pairs. Semantic datasets (PASCAL VOC, COCO) store
one record per image with a class-index map (255 = ignore).

Images from files are stored as the file's own bytes (`source_image`), not decoded and encoded again,
so training and evaluation see the file's pixels; the `encoding_format` below only applies to arrays
(the synthetic builder's images, and masks).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

log = logging.getLogger(__name__)


def referring_features():
  return tfds.features.FeaturesDict(
    {
      "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
      "image_id": tfds.features.Text(),
      "phrases": tfds.features.Sequence(tfds.features.Text()),
      # one [H, W, 1] mask per phrase, > 0 inside (the union of the phrase's regions): a 1-bit PNG
      # (`mask_feature`; datasets prepared before 1-bit masks hold 8-bit 0/1 ones)
      "masks": tfds.features.Sequence(tfds.features.Image(shape=(None, None, 1), encoding_format="png")),
    }
  )


def semantic_features(num_classes: int):
  return tfds.features.FeaturesDict(
    {
      "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
      "image_id": tfds.features.Text(),
      # class index per pixel (0 = background, 255 = ignore / void)
      "segmentation": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
      "classes": tfds.features.Sequence(tfds.features.ClassLabel(num_classes=num_classes)),
    }
  )


def require(path: Path, what: str, where: str) -> Path:
  """`path` if it exists, else an error naming the file and where to get it."""
  if not path.exists():
    raise FileNotFoundError(f"missing {what}: {path}\n{where}")
  return path


def manual_dir(dl_manager, name: str, where: str) -> Path:
  try:
    d = Path(dl_manager.manual_dir)
  except Exception as e:  # tfds raises AssertionError when no manual dir was given
    raise FileNotFoundError(f"{name} needs --manual-dir pointing at its files.\n{where}") from e
  return require(d, f"{name} manual directory", where)


# (format, mode) stored byte for byte: readers decode them to uint8 [H, W, 3] as PIL's convert("RGB")
# would (TFDS repeats a greyscale image's one channel, as convert("RGB") does).
STORED_AS_IS = {("JPEG", "RGB"), ("JPEG", "L"), ("PNG", "RGB"), ("PNG", "L")}


def source_image(path: Path) -> tuple[bytes, int, int]:
  """(bytes to store, height, width) for the image file `path`.

  An RGB or greyscale JPEG or PNG is stored unchanged, byte for byte. Anything else (a CMYK JPEG, a
  palette or alpha PNG, 16-bit, another format) would not decode to [H, W, 3] uint8, so it is
  converted with PIL's convert("RGB") and stored as a lossless PNG: its pixels are still exactly PIL's.
  The file is decoded once here so that a truncated or corrupt file fails the build, not training.
  """
  data = path.read_bytes()
  try:
    with Image.open(io.BytesIO(data)) as im:
      im.load()
      w, h = im.size
      if (im.format, im.mode) in STORED_AS_IS:
        return data, h, w
      buf = io.BytesIO()
      im.convert("RGB").save(buf, format="PNG")
  except OSError as e:  # PIL's UnidentifiedImageError and truncated-file errors
    raise ValueError(f"{path}: not a readable image: {e}") from None
  return buf.getvalue(), h, w


def label_map(path: Path, height: int, width: int) -> np.ndarray:
  """A class-index PNG (palette or greyscale, as VOC's and hsnet's label maps) as uint8 [H, W], checked
  against its image's size."""
  with Image.open(path) as lab:
    if lab.mode not in ("P", "L"):
      raise ValueError(f"{path}: expected a class index PNG (mode P or L), got mode {lab.mode}")
    seg = np.asarray(lab, np.uint8)
  if seg.shape != (height, width):
    raise ValueError(f"{path}: {seg.shape[1]}x{seg.shape[0]} does not match its image ({width}x{height})")
  return seg


def mask_feature(mask: np.ndarray) -> bytes:
  """A binary mask stored as a 1-bit PNG (read back with `> 0`): a reader inflates 8x fewer bytes
  than from an 8-bit one, which took most of the time of reading a training record (readers of
  datasets prepared before decode either)."""
  buf = io.BytesIO()
  Image.fromarray(np.asarray(mask, bool)).save(buf, "PNG")
  return buf.getvalue()


class SkipCounter:
  """Counts skipped records by reason and logs the totals (no silent skips)."""

  def __init__(self, dataset: str, split: str):
    self.dataset, self.split, self.counts = dataset, split, {}

  def skip(self, reason: str):
    self.counts[reason] = self.counts.get(reason, 0) + 1

  def report(self):
    for reason, n in sorted(self.counts.items()):
      log.warning("%s/%s: skipped %d record(s): %s", self.dataset, self.split, n, reason)
