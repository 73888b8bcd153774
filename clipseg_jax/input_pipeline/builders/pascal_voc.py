"""TFDS builder for PASCAL VOC 2012 segmentation from its original files.

Manual directory: `VOCdevkit/VOC2012/` (or `VOC2012/`, or that folder itself) with `JPEGImages/`,
`SegmentationClass/` (palette PNGs: 0 background, 1-20 classes, 255 void) and
`ImageSets/Segmentation/{train,val}.txt`. Where `SegmentationClass/` lacks an image, its label is read from
`SegmentationClassAug/` (the grayscale index PNGs of PFENet's and the original CLIPSeg's `Pascal5i.tar`, whose
val labels are VOC's own). Images are stored as their files' bytes
(`common.source_image`). PASCAL-5i folds: `input_pipeline.classes.pascal5i_fold`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from clipseg_jax.input_pipeline.builders.common import label_map, manual_dir, require, semantic_features, source_image

WHERE = (
  "Get VOCtrainval_11-May-2012.tar from the PASCAL VOC 2012 site "
  "(http://host.robots.ox.ac.uk/pascal/VOC/voc2012/) and unpack it into the manual directory."
)


def voc_root(root: Path) -> Path:
  for candidate in (root / "VOCdevkit" / "VOC2012", root / "VOC2012", root):
    if (candidate / "JPEGImages").is_dir():
      return candidate
  raise FileNotFoundError(
    f"missing PASCAL VOC 2012: no JPEGImages/ under {root}, {root}/VOC2012 or {root}/VOCdevkit/VOC2012\n{WHERE}"
  )


def label_file(root: Path, image_id: str) -> Path:
  """The label map of `image_id`: SegmentationClass/, else SegmentationClassAug/ (PFENet's layout)."""
  for folder in ("SegmentationClass", "SegmentationClassAug"):
    if (root / folder / f"{image_id}.png").exists():
      return root / folder / f"{image_id}.png"
  return require(
    root / "SegmentationClass" / f"{image_id}.png", f"label map of {image_id} (nor in SegmentationClassAug/)", WHERE
  )


class ClipsegPascalVoc(tfds.core.GeneratorBasedBuilder):
  """PASCAL VOC 2012 semantic segmentation (21 classes with background)."""

  name = "clipseg_pascal_voc"
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.1.0": "images stored as their files' bytes (no JPEG re-encoding).", "1.0.0": "First release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = WHERE

  def _info(self):
    return self.dataset_info_from_configs(
      features=semantic_features(21), homepage="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/"
    )

  def _split_generators(self, dl_manager):
    root = voc_root(manual_dir(dl_manager, "PASCAL VOC 2012", WHERE))
    lists = root / "ImageSets" / "Segmentation"
    return {
      split: self._generate_examples(root, require(lists / f"{split}.txt", f"{split} image list", WHERE))
      for split in ("train", "val")
    }

  def _generate_examples(self, root: Path, list_file: Path):
    for image_id in list_file.read_text().split():
      image_path = require(root / "JPEGImages" / f"{image_id}.jpg", f"image {image_id}", WHERE)
      label_path = label_file(root, image_id)
      image, h, w = source_image(image_path)
      seg = label_map(label_path, h, w)
      classes = sorted(int(c) for c in np.unique(seg) if 0 < c < 21)
      yield image_id, {"image": image, "image_id": image_id, "segmentation": seg[..., None], "classes": classes}
