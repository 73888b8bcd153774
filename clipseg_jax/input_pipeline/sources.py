"""Random-access referring sources: one record per image with its phrases and masks.

`ReferringSource` wraps a prepared TFDS dataset (array_record); `FolderSource` reads people's own
data from a folder (see README, "Your own data") with no build step. Both give records
`{"image": uint8 [H, W, 3], "image_id": str, "phrases": [str], "masks": [bool [H, W]]}` and
`phrases(i)` without decoding pixels, which is what the samplers index. A prepared dataset's records
decode on access (`LazyRecord`): the PhraseCut+ loader decodes one mask of a record and its image
after the crop is drawn (`image_bytes`, with PIL as the original's loader), not every mask and image.
"""

from __future__ import annotations

import collections.abc
import csv
import importlib
import io
import json
import logging
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from clipseg_jax.input_pipeline.builders import BUILDERS

REFERRING = ("synthetic", "phrasecut")
TFDS_DEFAULT_DATA_DIR = "~/tensorflow_datasets"  # TFDS's own default
log = logging.getLogger(__name__)


def default_data_dir() -> str:
  """Where prepared datasets live unless told otherwise: $TFDS_DATA_DIR (as TFDS itself reads it), else
  ~/tensorflow_datasets. The `data` and `eval` commands' --data-dir and a config's unset `data.data_dir`."""
  return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser(TFDS_DEFAULT_DATA_DIR)


def data_dir_or_default(data_dir) -> str:
  """A config's data directory (`~` expanded), or `default_data_dir()` where it is unset (None or "")."""
  return os.path.expanduser(str(data_dir)) if data_dir else default_data_dir()


def tfds_builder(name: str, data_dir: str | os.PathLike):
  """The TFDS builder for `name` ("synthetic", "synthetic/tiny", "phrasecut", "pascal_voc", "coco")."""
  import tensorflow_datasets as tfds

  short, _, config = name.partition("/")
  if short not in BUILDERS:
    raise ValueError(f"unknown dataset {short!r}; known: {', '.join(BUILDERS)} (and 'folder')")
  module, tfds_name = BUILDERS[short]
  importlib.import_module(module)
  full = f"{tfds_name}/{config}" if config else tfds_name
  builder = tfds.builder(full, data_dir=str(data_dir), file_format="array_record")
  if not builder.is_prepared():  # data prepared by an earlier version we still read
    for version in sorted(getattr(builder, "SUPPORTED_VERSIONS", ()), reverse=True):
      older = tfds.builder(f"{full}:{version}", data_dir=str(data_dir), file_format="array_record")
      if older.is_prepared():
        note = getattr(builder, "RELEASE_NOTES", {}).get(str(builder.version), "")
        log.warning(
          "%s: reading the data prepared at version %s; version %s differs (%s). Rebuild it with "
          "`clipseg-jax data build %s` to use it.",
          name,
          version,
          builder.version,
          note or "see the builder's release notes",
          short,
        )
        return older
  return builder


def build(name: str, *, data_dir, manual_dir=None):
  """Prepare dataset `name` under `data_dir` (reading `manual_dir` for real datasets)."""
  import tensorflow_datasets as tfds

  builder = tfds_builder(name, data_dir)
  config = tfds.download.DownloadConfig(manual_dir=str(manual_dir) if manual_dir else None)
  builder.download_and_prepare(download_config=config)
  return builder


def prepared_source(name: str, split: str, data_dir):
  builder = tfds_builder(name, data_dir)
  if not builder.is_prepared():
    raise FileNotFoundError(
      f"dataset {name!r} is not prepared in {data_dir}: run `clipseg-jax data build {name} --data-dir {data_dir}` first"
    )
  if split not in builder.info.splits:
    raise ValueError(f"{name} has no split {split!r}; it has {', '.join(builder.info.splits)}")
  return builder.as_data_source(split)


class ReferringSource:
  """A prepared referring dataset split as random-access records."""

  def __init__(self, name: str, split: str, data_dir):
    self.name, self.split = name, split
    self._source = prepared_source(name, split, data_dir)
    self._phrases = None

  def __len__(self):
    return len(self._source)

  def __getitem__(self, i: int) -> LazyRecord:
    from tensorflow.core.example import example_pb2

    feature = example_pb2.Example.FromString(self._source.data_source[int(i)]).features.feature
    return LazyRecord(
      image_bytes=feature["image"].bytes_list.value[0],
      image_id=_str(feature["image_id"].bytes_list.value[0]),
      phrases=[p.decode() for p in feature["phrases"].bytes_list.value],
      mask_bytes=list(feature["masks"].bytes_list.value),
    )

  def phrases(self, i: int) -> list[str]:
    if self._phrases is None:
      self._phrases = self._read_phrases()
    return self._phrases[i]

  def _read_phrases(self) -> list[list[str]]:
    """All records' phrases from the serialized protos (no image decoding)."""
    from tensorflow.core.example import example_pb2

    raw = self._source.data_source
    out = []
    for i in range(len(raw)):
      feature = example_pb2.Example.FromString(raw[i]).features.feature["phrases"]
      out.append([p.decode() for p in feature.bytes_list.value])
    return out


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def decode_image(data: bytes, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
  """uint8 [H, W, 3] of an encoded image as PIL reads it (the original's loader), or of its region
  `box` = (top, left, bottom, right), cropped before it becomes an array (fewer bytes copied)."""
  with Image.open(io.BytesIO(data)) as im:
    im = im if im.mode == "RGB" else im.convert("RGB")
    return np.asarray(im if box is None else im.crop((box[1], box[0], box[3], box[2])))


def decode_mask(data: bytes) -> np.ndarray:
  """bool [H, W] of a stored mask (> 0 inside). The 1-bit non-interlaced grayscale PNGs that
  `builders.common.mask_feature` writes are inflated, unfiltered and unpacked here (0.30 ms for
  500x375 against PIL's 0.49); any other image goes through PIL."""
  chunks = _png_chunks(data)
  if len(chunks.get(b"IHDR", [b""])[0]) == 13 and b"IDAT" in chunks:
    w, h, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"][0])
    if depth == 1 and colour == 0 and not interlace:
      rows = np.frombuffer(zlib.decompress(b"".join(chunks[b"IDAT"])), np.uint8)
      if rows.size == h * (1 + (w + 7) // 8):
        bits = _unfilter(rows.reshape(h, -1))
        if bits is not None:
          return np.unpackbits(bits, axis=1, count=w).view(bool)
  with Image.open(io.BytesIO(data)) as m:
    mask = np.asarray(m)
  return (mask[..., 0] if mask.ndim == 3 else mask) > 0


def _png_chunks(data: bytes) -> dict[bytes, list[bytes]]:
  """A PNG's chunks by type, in order ({} for anything else)."""
  chunks, pos = {}, len(PNG_SIGNATURE)
  if not data.startswith(PNG_SIGNATURE):
    return chunks
  while pos + 8 <= len(data):
    size, kind = struct.unpack(">I4s", data[pos : pos + 8])
    chunks.setdefault(kind, []).append(data[pos + 8 : pos + 8 + size])
    pos += 12 + size
  return chunks


def _unfilter(rows: np.ndarray) -> np.ndarray | None:
  """The scanlines of a PNG with one byte per filter unit (bit depth <= 8, one channel) from its
  filtered rows ([H, 1 + bytes]: the filter type first), for filters None (0), Sub (1) and Up (2);
  None when a row uses another. Up chains are a column-wise cumulative sum from the last row that
  does not depend on the one above (uint8 arithmetic wraps mod 256, as the filters do)."""
  kind, data = rows[:, 0], rows[:, 1:]
  if not (kind <= 2).all():
    return None
  data = data.copy()
  sub = kind == 1
  if sub.any():
    data[sub] = np.add.accumulate(data[sub], axis=1, dtype=np.uint8)
  if (kind[1:] == 2).any():
    index = np.arange(len(rows))
    start = np.maximum.accumulate(np.where((kind != 2) | (index == 0), index, 0))
    total = np.add.accumulate(data, axis=0, dtype=np.uint8)
    before = np.concatenate([np.zeros_like(total[:1]), total[:-1]])
    data = total - before[start]
  return data


class LazyMasks(collections.abc.Sequence):
  """A record's masks, each decoded from its stored PNG when indexed (bool [H, W]: `decode_mask`)."""

  def __init__(self, encoded: list[bytes], image_id: str = "?"):
    self._encoded, self._image_id = encoded, image_id

  def __len__(self):
    return len(self._encoded)

  def __getitem__(self, k):
    if isinstance(k, slice):
      return [self[j] for j in range(*k.indices(len(self)))]
    try:
      return decode_mask(self._encoded[k])
    except (OSError, ValueError, zlib.error, struct.error) as e:
      raise ValueError(f"image {self._image_id}: mask {k} is not a readable image ({e}); rebuild the dataset") from e


class LazyRecord(collections.abc.Mapping):
  """One record of a prepared dataset: `image` and `masks` decode when read; `image_bytes` is the
  stored file (JPEG or PNG, see `builders.common.source_image`), which `pcplus.image_of` decodes
  after cropping."""

  def __init__(self, image_bytes: bytes, image_id: str, phrases: list[str], mask_bytes: list[bytes]):
    self._fields = {"image_bytes": image_bytes, "image_id": image_id, "phrases": phrases}
    self._masks = LazyMasks(mask_bytes, image_id)

  def __getitem__(self, key):
    if key == "image":
      return decode_image(self._fields["image_bytes"])
    if key == "masks":
      return self._masks
    return self._fields[key]

  def __contains__(self, key):  # without decoding (Mapping's would read the value)
    return key in ("image", "masks") or key in self._fields

  def __iter__(self):
    return iter(("image", "image_bytes", "image_id", "phrases", "masks"))

  def __len__(self):
    return 5


class FolderSource:
  """People's own data: `annotations.json` or `annotations.csv` rows of (image, mask, phrase[, split])
  with paths relative to the folder; mask pixels > 0 are the object, an all-zero mask a negative."""

  def __init__(self, root, split: str | None = None):
    self.root = Path(root)
    self.split = split
    rows = read_annotations(self.root)
    if split is not None:
      rows = [r for r in rows if (r.get("split") or "train") == split]
    if not rows:
      raise ValueError(f"{self.root}: no annotation rows" + (f" for split {split!r}" if split else ""))
    self.rows = rows

  def __len__(self):
    return len(self.rows)

  def phrases(self, i: int) -> list[str]:
    return [self.rows[i]["phrase"]]

  def __getitem__(self, i: int) -> dict:
    row = self.rows[int(i)]
    with Image.open(self.root / row["image"]) as im:
      image = np.asarray(im.convert("RGB"))
    with Image.open(self.root / row["mask"]) as m:
      mask = np.asarray(m.convert("L")) > 0
    if mask.shape != image.shape[:2]:
      raise ValueError(
        f"{self.root / row['mask']}: mask is {mask.shape[1]}x{mask.shape[0]} but its image "
        f"is {image.shape[1]}x{image.shape[0]}"
      )
    return {"image": image, "image_id": row["image"], "phrases": [row["phrase"]], "masks": [mask]}


def read_annotations(root: Path) -> list[dict]:
  if (root / "annotations.json").exists():
    path = root / "annotations.json"
    rows = json.loads(path.read_text())
  elif (root / "annotations.csv").exists():
    path = root / "annotations.csv"
    with open(path, newline="") as f:
      rows = list(csv.DictReader(f))
  else:
    raise FileNotFoundError(
      f"{root} has no annotations.json or annotations.csv (rows of image, mask, "
      "phrase and optionally split; see the README)"
    )
  if not isinstance(rows, list):
    raise ValueError(f"{path}: expected a list of rows")
  for i, row in enumerate(rows):
    if not isinstance(row, dict) or not all(row.get(k) for k in ("image", "mask", "phrase")):
      raise ValueError(f"{path}: row {i} needs non-empty image, mask and phrase, got {row!r}")
    for key in ("image", "mask"):
      if not (root / row[key]).is_file():
        raise FileNotFoundError(f"{path}: row {i}: {key} file {root / row[key]} not found")
  return rows


def open_source(name: str, split: str, *, data_dir):
  """A referring source by name: a prepared TFDS dataset, or `folder` (data_dir = the folder)."""
  if name == "folder":
    return FolderSource(data_dir, split)
  if name.split("/")[0] not in REFERRING:
    raise ValueError(f"{name!r} is not a referring dataset (one of {', '.join(REFERRING)}, folder)")
  return ReferringSource(name, split, data_dir)


def raw_examples(name: str, split: str, *, data_dir):
  """(image, phrase) pairs before augmentation: dicts of `image` (uint8 HxWx3), `mask` (bool HxW,
  the union of the phrase's regions at the image's own size), `phrase`, `image_id`."""
  source = open_source(name, split, data_dir=data_dir)
  for i in range(len(source)):
    record = source[i]
    for phrase, mask in zip(record["phrases"], record["masks"]):
      yield {"image": record["image"], "mask": mask, "phrase": phrase, "image_id": record["image_id"]}


def _str(x) -> str:
  return x.decode() if isinstance(x, bytes) else str(x)
