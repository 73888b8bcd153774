"""TFDS builder for COCO 2014 instances as semantic maps (for COCO-20i one-shot evaluation).

Manual directory: `annotations/instances_{train,val}2014.json`, `train2014/`, `val2014/`. Category ids
map to contiguous 1..80 (sorted by id); crowd regions become 255 (ignored); where instances of
different classes overlap, the later annotation wins.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from clipseg_jax.input_pipeline.builders.common import SkipCounter, manual_dir, require, semantic_features
from clipseg_jax.input_pipeline.rasterize import coco_polygons, rle_to_mask

WHERE = (
  "Get COCO 2014 (train2014.zip, val2014.zip, annotations_trainval2014.zip) from "
  "https://cocodataset.org/#download and unpack them into the manual directory."
)
IGNORE = 255


class ClipsegCoco(tfds.core.GeneratorBasedBuilder):
  """COCO 2014 instance annotations rendered to 81-class semantic maps."""

  name = "clipseg_coco"
  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = WHERE

  def _info(self):
    return self.dataset_info_from_configs(features=semantic_features(81), homepage="https://cocodataset.org")

  def _split_generators(self, dl_manager):
    root = manual_dir(dl_manager, "COCO 2014", WHERE)
    return {
      split: self._generate_examples(root, name) for split, name in (("train", "train2014"), ("validation", "val2014"))
    }

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
      with Image.open(path) as im:
        image = np.asarray(im.convert("RGB"))
      h, w = image.shape[:2]
      seg = np.zeros((h, w), np.uint8)
      for ann in anns:
        seg[annotation_mask(ann, h, w, ann_path.name)] = IGNORE if ann.get("iscrowd") else index[ann["category_id"]]
      classes = sorted(int(c) for c in np.unique(seg) if 0 < c < IGNORE)
      yield (
        str(info["id"]),
        {"image": image, "image_id": str(info["id"]), "segmentation": seg[..., None], "classes": classes},
      )
    skips.report()


def annotation_mask(ann: dict, h: int, w: int, source: str) -> np.ndarray:
  seg = ann["segmentation"]
  try:
    if isinstance(seg, list):
      return coco_polygons(seg, h, w)
    mask = rle_to_mask(seg)
  except (TypeError, ValueError, KeyError) as e:
    raise ValueError(f"{source}: annotation {ann.get('id')!r} has a malformed segmentation: {e}") from None
  if mask.shape != (h, w):
    raise ValueError(f"{source}: annotation {ann.get('id')!r} RLE is {mask.shape}, image is {(h, w)}")
  return mask
