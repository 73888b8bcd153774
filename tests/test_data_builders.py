"""Dataset builders on tiny fixtures written in each dataset's real on-disk layout."""

import json

import numpy as np
import pytest
from conftest import write_jpeg, write_voc

from clipseg_jax.input_pipeline import build, raw_examples
from clipseg_jax.input_pipeline.rasterize import phrasecut_mask, polygons_to_mask, rle_to_mask
from clipseg_jax.input_pipeline.sources import prepared_source


def test_rasterizer_known_areas():
  square = polygons_to_mask([[[2, 2], [6, 2], [6, 6], [2, 6]]], 10, 10)
  assert square.sum() == 25 and square[2:7, 2:7].all()  # boundary included
  # Pick's theorem: lattice points inside or on triangle (0,0),(8,0),(0,8) = A + B/2 + 1 = 32 + 12 + 1
  assert polygons_to_mask([[[0, 0], [8, 0], [0, 8]]], 12, 12).sum() == 45
  # vertices are truncated to integers, as PhraseCut's API does
  assert np.array_equal(polygons_to_mask([[[2.9, 2.9], [6.7, 2.2], [6.1, 6.99], [2.5, 6.5]]], 10, 10), square)
  union = phrasecut_mask([[[[0, 0], [3, 0], [3, 3], [0, 3]]], [[[2, 2], [5, 2], [5, 5], [2, 5]]]], 8, 8)
  assert union.sum() == 16 + 16 - 4


def encode_rle(mask: np.ndarray) -> dict:
  """COCO compressed RLE, written from the format's description (column-major runs, 0s first)."""
  flat = mask.T.ravel().astype(np.uint8)
  change = np.flatnonzero(np.diff(flat)) + 1
  runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
  if flat[0]:
    runs = [0] + runs
  chars = []
  for i, x in enumerate(runs):
    if i > 2:
      x -= runs[i - 2]
    more = True
    while more:
      c = x & 0x1F
      x >>= 5
      more = not ((x == 0 and not c & 0x10) or (x == -1 and c & 0x10))
      chars.append(chr(c + 48 + (0x20 if more else 0)))
  return {"size": list(mask.shape), "counts": "".join(chars)}


def test_rle_decoding():
  rng = np.random.RandomState(0)
  for shape in [(7, 5), (40, 33)]:
    mask = rng.rand(*shape) > 0.6
    assert np.array_equal(rle_to_mask(encode_rle(mask)), mask)
  mask = np.zeros((3, 4), bool)
  mask[1, 2] = True  # column-major position 2*3+1 = 7
  assert np.array_equal(rle_to_mask({"size": [3, 4], "counts": [7, 1, 4]}), mask)


@pytest.fixture
def phrasecut_dir(tmp_path):
  root = tmp_path / "phrasecut"
  sizes = {1: (40, 60), 2: (50, 30), 3: (32, 32)}
  for image_id, (h, w) in sizes.items():
    write_jpeg(root / "images" / f"{image_id}.jpg", h, w, image_id)
  (root / "image_data_split.json").write_text(
    json.dumps(
      [{"image_id": i, "height": h, "width": w, "split": "train" if i < 3 else "test"} for i, (h, w) in sizes.items()]
    )
  )
  rect = lambda x0, y0, x1, y1: [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]
  train = [
    {"task_id": "1__a", "image_id": 1, "phrase": "red car", "Polygons": [[rect(0, 0, 9, 9)], [rect(20, 10, 29, 19)]]},
    {"task_id": "1__b", "image_id": 1, "phrase": "tree", "Polygons": [[rect(40, 0, 59, 39)]]},
    {"task_id": "2__a", "image_id": 2, "phrase": "red car", "Polygons": [[rect(5, 5, 14, 24)]]},
  ]
  test = [{"task_id": "3__a", "image_id": 3, "phrase": "sky", "Polygons": [[rect(0, 0, 31, 3)]]}]
  (root / "refer_train.json").write_text(json.dumps(train))
  (root / "refer_test.json").write_text(json.dumps(test))
  return root


def test_phrasecut_builder(phrasecut_dir, tmp_path):
  build("phrasecut", data_dir=tmp_path / "tfds", manual_dir=phrasecut_dir)
  examples = list(raw_examples("phrasecut", "train", data_dir=tmp_path / "tfds"))
  got = sorted((e["image_id"], e["phrase"], int(e["mask"].sum()), e["image"].shape) for e in examples)
  assert got == [
    ("1", "red car", 200, (40, 60, 3)),
    ("1", "tree", 800, (40, 60, 3)),
    ("2", "red car", 200, (50, 30, 3)),
  ]
  for e in examples:
    assert e["mask"].dtype == bool and e["mask"].shape == e["image"].shape[:2]
  assert [e["phrase"] for e in raw_examples("phrasecut", "test", data_dir=tmp_path / "tfds")] == ["sky"]


def test_phrasecut_malformed_record_is_named(phrasecut_dir, tmp_path):
  tasks = json.loads((phrasecut_dir / "refer_train.json").read_text())
  tasks[1]["Polygons"] = [["not", "points"]]
  (phrasecut_dir / "refer_train.json").write_text(json.dumps(tasks))
  with pytest.raises(ValueError, match=r"refer_train.json record 1 \(task_id '1__b'\)"):
    build("phrasecut", data_dir=tmp_path / "tfds", manual_dir=phrasecut_dir)


def test_phrasecut_missing_files_named(phrasecut_dir, tmp_path):
  (phrasecut_dir / "image_data_split.json").unlink()
  with pytest.raises(FileNotFoundError, match=r"image_data_split.json[\s\S]*PhraseCutDataset"):
    build("phrasecut", data_dir=tmp_path / "tfds", manual_dir=phrasecut_dir)
  with pytest.raises(FileNotFoundError, match="needs --manual-dir"):
    build("phrasecut", data_dir=tmp_path / "tfds2")


def test_unprepared_dataset_says_how(tmp_path):
  with pytest.raises(FileNotFoundError, match="clipseg-jax data build phrasecut"):
    list(raw_examples("phrasecut", "train", data_dir=tmp_path))


def test_pascal_voc_builder(tmp_path):
  labels = write_voc(tmp_path / "voc")
  build("pascal_voc", data_dir=tmp_path / "tfds", manual_dir=tmp_path / "voc")
  val = prepared_source("pascal_voc", "val", tmp_path / "tfds")
  assert len(val) == 1 and len(prepared_source("pascal_voc", "train", tmp_path / "tfds")) == 2
  r = val[0]
  assert np.array_equal(r["segmentation"][..., 0], labels["2007_000003"])
  assert list(r["classes"]) == [7, 15]


def test_coco_builder(tmp_path):
  root = tmp_path / "coco"
  write_jpeg(root / "val2014" / "COCO_val2014_000000000042.jpg", 16, 20, 1)
  write_jpeg(root / "val2014" / "COCO_val2014_000000000043.jpg", 16, 20, 2)
  write_jpeg(root / "train2014" / "COCO_train2014_000000000007.jpg", 10, 10, 3)
  blob = np.zeros((16, 20), bool)
  blob[8:12, 1:5] = True
  crowd = np.zeros((16, 20), bool)
  crowd[0:2, 15:20] = True
  val = {
    "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 90, "name": "toothbrush"}],
    "images": [
      {"id": 42, "file_name": "COCO_val2014_000000000042.jpg", "height": 16, "width": 20},
      {"id": 43, "file_name": "COCO_val2014_000000000043.jpg", "height": 16, "width": 20},
    ],
    "annotations": [
      {"id": 1, "image_id": 42, "category_id": 18, "iscrowd": 0, "segmentation": [[2, 2, 6, 2, 6, 6, 2, 6]]},
      {"id": 2, "image_id": 42, "category_id": 90, "iscrowd": 0, "segmentation": encode_rle(blob)},
      {"id": 3, "image_id": 42, "category_id": 1, "iscrowd": 1, "segmentation": encode_rle(crowd)},
    ],
  }
  train = {
    "categories": val["categories"],
    "images": [{"id": 7, "file_name": "COCO_train2014_000000000007.jpg", "height": 10, "width": 10}],
    "annotations": [
      {"id": 9, "image_id": 7, "category_id": 1, "iscrowd": 0, "segmentation": [[0, 0, 3, 0, 3, 3, 0, 3]]}
    ],
  }
  (root / "annotations").mkdir(parents=True)
  (root / "annotations" / "instances_val2014.json").write_text(json.dumps(val))
  (root / "annotations" / "instances_train2014.json").write_text(json.dumps(train))
  build("coco", data_dir=tmp_path / "tfds", manual_dir=root)
  source = prepared_source("coco", "validation", tmp_path / "tfds")
  assert len(source) == 1  # image 43 has no annotations: skipped (and counted in the log)
  seg = source[0]["segmentation"][..., 0]
  want = np.zeros((16, 20), np.uint8)
  want[2:7, 2:7] = 2  # dog -> 2nd category
  want[blob] = 3  # toothbrush (id 90) -> 3
  want[crowd] = 255  # crowd -> ignore
  assert np.array_equal(seg, want)
  assert list(source[0]["classes"]) == [2, 3]
