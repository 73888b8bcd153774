"""TFDS builder for COCO 2014 instances as semantic maps (for COCO-20i one-shot evaluation).

Two layouts of the manual directory:
- hsnet's COCO-20i (what the original CLIPSeg evaluates on, datasets/coco_wrapper.py): `COCO2014/` (or the
  manual directory itself) with `annotations/{train2014,val2014}/NAME.png` label maps (0 background, class
  index + 1 for COCO's 80 classes in id order) and `{train2014,val2014}/NAME.jpg`. The maps are stored as
  they are (hsnet reads them as they are: no crowd or ignore label); record ids are hsnet's names
  (`val2014/NAME.jpg`). Used whenever an `annotations/{train2014,val2014}/` folder exists.
- COCO's own: `annotations/instances_{train,val}2014.json`, `train2014/`, `val2014/`. Category ids
map to contiguous 1..80 (sorted by id); crowd regions become 255 (ignored); where instances of
different classes overlap, the later annotation wins. Masks are rasterised by pycocotools exactly as
`COCO.annToMask` does (polygons, uncompressed and compressed RLEs); images are stored as their files'
bytes (`common.source_image`).
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from pycocotools import mask as mask_utils

from clipseg_jax.input_pipeline.builders.common import (
  SkipCounter,
  label_map,
  manual_dir,
  require,
  semantic_features,
  source_image,
)
from clipseg_jax.input_pipeline.rasterize import rle_counts_from_string

WHERE = (
  "Get COCO 2014 (train2014.zip, val2014.zip, annotations_trainval2014.zip) from "
  "https://cocodataset.org/#download and unpack them into the manual directory."
)
IGNORE = 255
N_CLASSES = 80
HSNET_SPLITS = (("train", "train2014"), ("validation", "val2014"))
HSNET_WHERE = (
  "hsnet's COCO-20i layout: COCO2014/{train2014,val2014}/*.jpg (COCO 2014 images) and "
  "COCO2014/annotations/{train2014,val2014}/*.png (hsnet's label maps, see github.com/juhongm999/hsnet)."
)


class ClipsegCoco(tfds.core.GeneratorBasedBuilder):
  """COCO 2014 instance annotations rendered to 81-class semantic maps."""

  name = "clipseg_coco"
  VERSION = tfds.core.Version("1.2.0")
  RELEASE_NOTES = {
    "1.2.0": "hsnet's COCO-20i layout (annotation PNGs, no ignore label) read when present.",
    "1.1.0": "images stored as their files' bytes (no JPEG re-encoding); masks drawn by pycocotools as COCO.annToMask.",
    "1.0.0": "First release.",
  }
  MANUAL_DOWNLOAD_INSTRUCTIONS = WHERE

  def _info(self):
    return self.dataset_info_from_configs(features=semantic_features(N_CLASSES + 1), homepage="https://cocodataset.org")

  def _split_generators(self, dl_manager):
    root = manual_dir(dl_manager, "COCO 2014", WHERE)
    hsnet = hsnet_root(root)
    if hsnet is not None:
      return {
        split: self._generate_hsnet(hsnet, name)
        for split, name in HSNET_SPLITS
        if (hsnet / "annotations" / name).is_dir()
      }
    return {
      split: self._generate_examples(root, name) for split, name in (("train", "train2014"), ("validation", "val2014"))
    }

  def _generate_hsnet(self, root: Path, name: str):
    """hsnet's label maps as they are, with their images (`{name}/NAME.jpg`, hsnet's record names)."""
    for png in sorted((root / "annotations" / name).glob("*.png")):
      image_id = f"{name}/{png.stem}.jpg"
      path = require(root / image_id, f"image of {png}", HSNET_WHERE)
      image, h, w = source_image(path)
      seg = label_map(png, h, w)
      values = np.unique(seg)
      bad = [int(v) for v in values if N_CLASSES < v != IGNORE]
      if bad:
        raise ValueError(f"{png}: label values {bad} are not COCO class indices (1-{N_CLASSES}) or {IGNORE}")
      classes = [int(c) for c in values if 0 < c <= N_CLASSES]
      yield image_id, {"image": image, "image_id": image_id, "segmentation": seg[..., None], "classes": classes}

  def _generate_examples(self, root: Path, name: str):
    ann_path = require(root / "annotations" / f"instances_{name}.json", f"{name} annotations", WHERE)
    with open(ann_path) as f:
      data = json.load(f)
    categories = sorted(c["id"] for c in data["categories"])
    index = {cid: i + 1 for i, cid in enumerate(categories)}
    by_image = collections.defaultdict(list)
    for i, ann in enumerate(data["annotations"]):
      if not {"image_id", "category_id", "segmentation"} <= ann.keys():
        raise ValueError(
          f"{ann_path.name}: annotation {i} (id {ann.get('id')!r}) needs image_id, category_id and segmentation"
        )
      by_image[ann["image_id"]].append(ann)
    skips = SkipCounter("coco", name)
    for info in data["images"]:
      anns = by_image.get(info["id"], [])
      if not anns:
        skips.skip("image without annotations")
        continue
      path = require(root / name / info["file_name"], f"image {info['file_name']}", WHERE)
      image, h, w = source_image(path)
      if (info.get("height", h), info.get("width", w)) != (h, w):
        raise ValueError(
          f"{ann_path.name}: image {info['id']} is {info.get('height')}x{info.get('width')} (HxW) there, "
          f"but {path} is {h}x{w}"
        )
      seg = np.zeros((h, w), np.uint8)
      for ann in anns:
        seg[annotation_mask(ann, h, w, ann_path.name)] = IGNORE if ann.get("iscrowd") else index[ann["category_id"]]
      classes = sorted(int(c) for c in np.unique(seg) if 0 < c < IGNORE)
      yield (
        str(info["id"]),
        {"image": image, "image_id": str(info["id"]), "segmentation": seg[..., None], "classes": classes},
      )
    skips.report()


def hsnet_root(root: Path) -> Path | None:
  """The folder of hsnet's layout (`annotations/{train2014,val2014}/` PNG folders): `root/COCO2014` or
  `root`; None for COCO's own layout."""
  for candidate in (root / "COCO2014", root):
    if any((candidate / "annotations" / name).is_dir() for _, name in HSNET_SPLITS):
      return candidate
  return None


def annotation_mask(ann: dict, h: int, w: int, source: str) -> np.ndarray:
  """Bool [h, w] mask of a COCO annotation, as `pycocotools.coco.COCO.annToMask` draws it."""
  seg = ann["segmentation"]
  try:
    if isinstance(seg, list):  # polygons [x0, y0, x1, y1, ...]
      rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    else:
      check_rle(seg, h, w)
      rle = mask_utils.frPyObjects(seg, h, w) if isinstance(seg["counts"], list) else seg
    return mask_utils.decode(rle).astype(bool)
  except Exception as e:  # pycocotools raises bare Exception ("input type is not supported.") too
    raise ValueError(f"{source}: annotation {ann.get('id')!r} has a malformed segmentation: {e}") from e


def check_rle(rle: dict, h: int, w: int):
  """pycocotools decodes runs without bounds checks: reject an RLE whose runs do not cover [h, w]."""
  if [int(v) for v in rle["size"]] != [h, w]:
    raise ValueError(f"RLE is {rle['size'][0]}x{rle['size'][1]}, image is {h}x{w}")
  counts = rle["counts"]
  if isinstance(counts, (str, bytes)):
    counts = rle_counts_from_string(counts.decode() if isinstance(counts, bytes) else counts)
  if any(int(c) < 0 for c in counts) or sum(int(c) for c in counts) != h * w:
    raise ValueError(f"RLE runs sum to {sum(int(c) for c in counts)} (or are negative), expected {h}x{w}={h * w}")
