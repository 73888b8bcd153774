"""Dataset builders on tiny fixtures written in each dataset's real on-disk layout.

Images must reach training and evaluation as their files' own bytes (no re-encoding), and COCO masks
as pycocotools' `COCO.annToMask` draws them.
"""

import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import write_jpeg, write_voc
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from clipseg_jax.input_pipeline import build, open_source, raw_examples, sources
from clipseg_jax.input_pipeline.builders.common import mask_feature
from clipseg_jax.input_pipeline.rasterize import phrasecut_mask, polygons_to_mask, rle_counts_from_string
from clipseg_jax.input_pipeline.sources import decode_mask, prepared_source


def stored_images(name: str, split: str, data_dir) -> dict[str, bytes]:
  """image_id -> the encoded image bytes exactly as stored in the prepared array_record records."""
  from tensorflow.core.example import example_pb2

  raw = prepared_source(name, split, data_dir).data_source
  out = {}
  for i in range(len(raw)):
    feature = example_pb2.Example.FromString(raw[i]).features.feature
    out[feature["image_id"].bytes_list.value[0].decode()] = feature["image"].bytes_list.value[0]
  return out


def pil_rgb(path_or_bytes) -> np.ndarray:
  with Image.open(io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes) as im:
    return np.asarray(im.convert("RGB"))


def write_smooth_jpeg(path: Path, h: int, w: int, mode: str = "RGB"):
  """A smooth image (where decoding and re-encoding a JPEG moves pixels most visibly), saved in `mode`."""
  y, x = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
  rgb = np.stack([255 * x, 255 * y, 128 + 100 * np.sin(6 * x + 4 * y)], -1).clip(0, 255).astype(np.uint8)
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(rgb).convert(mode).save(path, quality=90)


def original_mask(polygons, height: int, width: int) -> np.ndarray:
  """timojl/clipseg `PhraseCut.load_sample`: skimage's polygon2mask per polygon on its (y, x) vertices,
  at the annotated size, the max over every polygon of every instance."""
  from skimage.draw import polygon2mask

  masks = [polygon2mask((height, width), [p[::-1] for p in poly]) for polys in polygons for poly in polys]
  return np.stack(masks).max(0)


def test_rasterizer_is_the_originals():
  """Integer squares keep their boundary; fractional, sub-pixel, degenerate and out-of-image polygons
  and unions are polygon2mask's on (y, x) (PIL on truncated vertices differs on all of these)."""
  square = polygons_to_mask([[[2, 2], [6, 2], [6, 6], [2, 6]]], 10, 10)
  assert square.sum() == 25 and square[2:7, 2:7].all()
  shapes = [
    [[[[2.9, 2.9], [6.7, 2.2], [6.1, 6.99], [2.5, 6.5]]]],
    [[np.reshape(SMALL, (-1, 2)).tolist()]],
    [[[[0.4, 0.4], [0.6, 0.4], [0.6, 0.6]]]],  # covers no pixel centre
    [[[[1, 1], [4, 4]]], [[[3.5, 0.2]]]],  # a segment and a point
    [[[[-3.2, 5.5], [12.7, 4.1], [20.3, 13.9], [4.4, 9.6]]], [[[7, 1], [9.5, 1.2], [8.1, 3.3]]]],  # instances
  ]
  for instances in shapes:
    np.testing.assert_array_equal(phrasecut_mask(instances, 12, 15), original_mask(instances, 12, 15))


def rle_runs(mask: np.ndarray) -> list[int]:
  """COCO's uncompressed RLE counts (column-major runs, 0s first), as crowd annotations store them."""
  flat = mask.T.ravel().astype(np.uint8)
  change = np.flatnonzero(np.diff(flat)) + 1
  runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
  return [0] + runs if flat[0] else runs


def encode_rle(mask: np.ndarray) -> dict:
  """COCO compressed RLE, written from the format's description (6-bit chunks, deltas after the 2nd)."""
  runs = rle_runs(mask)
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


def test_rle_strings_match_pycocotools():
  rng = np.random.RandomState(0)
  for shape in [(7, 5), (40, 33)]:
    mask = rng.rand(*shape) > 0.6
    ours = encode_rle(mask)
    theirs = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert ours["counts"] == theirs["counts"].decode()
    counts = rle_counts_from_string(ours["counts"])  # column-major runs, 0s first
    runs = np.repeat(np.arange(len(counts)) % 2 == 1, counts)
    assert np.array_equal(runs.reshape(shape[1], shape[0]).T, mask)
  mask = np.zeros((3, 4), bool)
  mask[1, 2] = True  # column-major position 2*3+1 = 7
  assert rle_counts_from_string(encode_rle(mask)["counts"]) == [7, 1, 4]


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


def box_of(*polys):
  """PhraseCut's instance box [x, y, w, h] around polygons (its files carry one per instance)."""
  pts = np.concatenate([np.reshape(p, (-1, 2)) for p in polys])
  (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
  return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


@pytest.fixture
def phrasecut_original_dir(tmp_path):
  """PhraseCut's real layout with what the original CLIPSeg treats specially: fractional and few-pixel
  polygons, several instances and polygons per phrase, a polygon leaving the image, a phrase whose
  polygons cover no pixel centre (kept, empty), a phrase with zero-area boxes (dropped), and an image
  the original lists invalid (its annotated size is wrong; dropped)."""
  root = tmp_path / "phrasecut"
  sizes = {10: (48, 64), 11: (30, 40), 150417: (20, 20)}  # 150417: annotated 20 x 20, the file is 24 x 32
  write_jpeg(root / "images" / "10.jpg", 48, 64, 10)
  write_jpeg(root / "images" / "11.jpg", 30, 40, 11)
  write_jpeg(root / "images" / "150417.jpg", 24, 32, 12)
  (root / "image_data_split.json").write_text(
    json.dumps([{"image_id": i, "height": h, "width": w, "split": "train"} for i, (h, w) in sizes.items()])
  )
  frac_a = [[2.9, 2.9], [16.7, 2.2], [12.1, 16.99], [2.5, 10.5]]
  frac_b = [[30.2, 20.6], [33.9, 21.1], [31.4, 24.8]]
  small = np.reshape(SMALL, (-1, 2)).tolist()
  leaving = [[-4.5, 3.3], [10.2, -2.7], [45.6, 12.4], [20.1, 33.8]]
  dot = [[5.4, 5.4], [5.6, 5.45], [5.5, 5.6]]
  tasks = [
    ("10__a", 10, "brown dog", [[frac_a, frac_b], [small]]),
    ("10__b", 10, "speck", [[dot]]),
    ("10__c", 10, "line", [[[[3, 40], [60, 40], [60, 40], [3, 40]]]]),  # a flat polygon: its box has no area
    ("11__a", 11, "brown dog", [[leaving]]),
    ("11__b", 11, "roof", [[[[0, 0], [39, 0], [39, 4.5], [0, 4.5]]], [[[10.5, 10.5], [20.5, 10.5], [15, 20.2]]]]),
    ("150417__a", 150417, "sky", [[[[0, 0], [19, 0], [19, 9], [0, 9]]]]),
  ]
  records = [
    {
      "task_id": t,
      "image_id": i,
      "phrase": p,
      "Polygons": polys,
      "instance_boxes": [box_of(*inst) for inst in polys],
    }
    for t, i, p, polys in tasks
  ]
  (root / "refer_train.json").write_text(json.dumps(records))
  return root


def original_pairs(root: Path, split: str) -> list[tuple[str, str, np.ndarray]]:
  """The (image id, phrase, mask) pairs timojl/clipseg's `PhraseCut` serves: images in its
  `invalid_img_ids` left out, then `min_size=0`: the phrase's boxes' total area (w * h) / image area > 0."""
  invalid = {150417, 285665, 498246, 61564, 285743, 498269, 498010, 150516, 150344, 286093, 61530}
  invalid |= {150333, 286065, 285814, 498187, 285761, 498042}
  info = {img["image_id"]: img for img in json.loads((root / "image_data_split.json").read_text())}
  out = []
  for task in json.loads((root / f"refer_{split}.json").read_text()):
    img = info[task["image_id"]]
    size = sum(b[2] * b[3] for b in task["instance_boxes"]) / (img["width"] * img["height"])
    if task["image_id"] in invalid or not size > 0:
      continue
    out.append((str(task["image_id"]), task["phrase"], original_mask(task["Polygons"], img["height"], img["width"])))
  return out


def test_phrasecut_masks_and_pairs_are_the_originals(phrasecut_original_dir, tmp_path):
  build("phrasecut", data_dir=tmp_path / "tfds", manual_dir=phrasecut_original_dir)
  ours = sorted(
    ((e["image_id"], e["phrase"], e["mask"]) for e in raw_examples("phrasecut", "train", data_dir=tmp_path / "tfds")),
    key=lambda x: x[:2],
  )
  want = sorted(original_pairs(phrasecut_original_dir, "train"), key=lambda x: x[:2])
  assert (
    [x[:2] for x in ours]
    == [x[:2] for x in want]
    == [
      ("10", "brown dog"),
      ("10", "speck"),
      ("11", "brown dog"),
      ("11", "roof"),
    ]
  )  # "line" (no box area) and image 150417 (invalid) dropped; "speck" kept with an empty mask
  for (image_id, phrase, mask), (_, _, expected) in zip(ours, want):
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, expected, err_msg=f"{image_id} {phrase}")
  assert not ours[1][2].any() and ours[0][2].sum() > 100


def test_phrasecut_stores_source_bytes(tmp_path):
  root = tmp_path / "phrasecut"
  images = root / "images"
  write_smooth_jpeg(images / "1.jpg", 40, 60)
  write_smooth_jpeg(images / "2.jpg", 30, 20, "L")  # greyscale: stored as is, decoded to 3 equal channels
  write_jpeg(images / "3.jpg", 24, 32, 3)  # noise
  write_smooth_jpeg(images / "4.jpg", 20, 30, "CMYK")  # would decode to 4 channels: converted, stored as PNG
  (root / "image_data_split.json").write_text("[]")
  square = [[[[0, 0], [5, 0], [5, 5], [0, 5]]]]
  tasks = [{"task_id": f"{i}__a", "image_id": i, "phrase": "thing", "Polygons": square} for i in (1, 2, 3, 4)]
  (root / "refer_train.json").write_text(json.dumps(tasks))
  build("phrasecut", data_dir=tmp_path / "tfds", manual_dir=root)

  stored = stored_images("phrasecut", "train", tmp_path / "tfds")
  for i in (1, 2, 3):
    assert stored[str(i)] == (images / f"{i}.jpg").read_bytes()
  assert stored["4"].startswith(b"\x89PNG") and np.array_equal(pil_rgb(stored["4"]), pil_rgb(images / "4.jpg"))
  examples = {e["image_id"]: e for e in raw_examples("phrasecut", "train", data_dir=tmp_path / "tfds")}
  for i in (1, 2, 3, 4):
    image = examples[str(i)]["image"]
    assert image.dtype == np.uint8 and image.ndim == 3
    assert np.array_equal(image, pil_rgb(images / f"{i}.jpg")), i  # PIL's own pixels, none moved


def test_prepared_records_decode_on_access_as_tfds_does(phrasecut_dir, tmp_path, monkeypatch):
  builder = build("phrasecut", data_dir=tmp_path / "tfds", manual_dir=phrasecut_dir)
  source, eager = open_source("phrasecut", "train", data_dir=tmp_path / "tfds"), builder.as_data_source("train")
  for i in range(len(source)):
    record = source[i]
    assert "image" in record and record["image_bytes"].startswith(b"\xff\xd8")  # the JPEG as stored
    assert np.array_equal(record["image"], eager[i]["image"]) and record["image"].dtype == np.uint8
    assert record["phrases"] == [p.decode() for p in eager[i]["phrases"]]
    assert record["image_id"] == eager[i]["image_id"].decode()
    assert len(record["masks"]) == len(eager[i]["masks"])
    for mask, stored in zip(record["masks"], eager[i]["masks"]):
      assert mask.dtype == bool and np.array_equal(mask, stored[..., 0] > 0)
  # What PhraseCut+ reads of a record (one mask, the image's bytes) decodes one mask and no image.
  opened, masks = [], []
  real_open, real_mask = Image.open, sources.decode_mask
  monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(1) or real_open(*a, **k))
  monkeypatch.setattr(sources, "decode_mask", lambda data: masks.append(1) or real_mask(data))
  record = source[0]
  record["masks"][1], record["image_bytes"]
  assert not opened and len(masks) == 1


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
  jpegs = tmp_path / "voc" / "VOCdevkit" / "VOC2012" / "JPEGImages"
  stored = {
    **stored_images("pascal_voc", "train", tmp_path / "tfds"),
    **stored_images("pascal_voc", "val", tmp_path / "tfds"),
  }
  assert sorted(stored) == sorted(labels)
  for image_id, data in stored.items():
    assert data == (jpegs / f"{image_id}.jpg").read_bytes()
  assert r["image"].dtype == np.uint8 and np.array_equal(r["image"], pil_rgb(jpegs / f"{r['image_id'].decode()}.jpg"))


SMALL = [5.3, 4.2, 8.6, 4.9, 6.1, 7.8]  # a triangle of a few pixels: where PIL's drawing differs most
LARGE = [3, 12, 40, 10.5, 44.2, 35, 20, 38.7, 5, 30]


def write_coco(root: Path) -> tuple[dict, dict]:
  """COCO 2014 in its real layout; returns the val annotations and the (compressed, crowd) RLE masks."""
  write_smooth_jpeg(root / "val2014" / "COCO_val2014_000000000042.jpg", 40, 48)
  write_jpeg(root / "val2014" / "COCO_val2014_000000000043.jpg", 16, 20, 2)
  write_smooth_jpeg(root / "val2014" / "COCO_val2014_000000000044.png", 12, 14)  # a PNG stays PNG
  write_jpeg(root / "train2014" / "COCO_train2014_000000000007.jpg", 10, 10, 3)
  blob = np.zeros((40, 48), bool)
  blob[20:26, 30:40] = True
  crowd = np.zeros((40, 48), bool)
  crowd[0:3, 40:48] = True
  val = {
    "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 90, "name": "toothbrush"}],
    "images": [
      {"id": 42, "file_name": "COCO_val2014_000000000042.jpg", "height": 40, "width": 48},
      {"id": 43, "file_name": "COCO_val2014_000000000043.jpg", "height": 16, "width": 20},
      {"id": 44, "file_name": "COCO_val2014_000000000044.png", "height": 12, "width": 14},
    ],
    "annotations": [
      {"id": 1, "image_id": 42, "category_id": 18, "iscrowd": 0, "segmentation": [LARGE]},
      {"id": 2, "image_id": 42, "category_id": 90, "iscrowd": 0, "segmentation": encode_rle(blob)},
      {"id": 3, "image_id": 42, "category_id": 1, "iscrowd": 0, "segmentation": [SMALL]},
      {
        "id": 4,
        "image_id": 42,
        "category_id": 1,
        "iscrowd": 1,
        "segmentation": {"size": [40, 48], "counts": rle_runs(crowd)},
      },
      {"id": 5, "image_id": 44, "category_id": 18, "iscrowd": 0, "segmentation": [[1, 1, 6, 1, 6, 6, 1, 6]]},
    ],
  }
  train = {
    "categories": val["categories"],
    "images": [{"id": 7, "file_name": "COCO_train2014_000000000007.jpg", "height": 10, "width": 10}],
    "annotations": [
      {"id": 9, "image_id": 7, "category_id": 1, "iscrowd": 0, "segmentation": [[0, 0, 3, 0, 3, 3, 0, 3]]}
    ],
  }
  (root / "annotations").mkdir(parents=True, exist_ok=True)
  (root / "annotations" / "instances_val2014.json").write_text(json.dumps(val))
  (root / "annotations" / "instances_train2014.json").write_text(json.dumps(train))
  return val, {"blob": blob, "crowd": crowd}


def test_coco_builder(tmp_path):
  root = tmp_path / "coco"
  val, rles = write_coco(root)
  build("coco", data_dir=tmp_path / "tfds", manual_dir=root)
  source = prepared_source("coco", "validation", tmp_path / "tfds")
  assert len(source) == 2  # image 43 has no annotations: skipped (and counted in the log)
  records = {r["image_id"].decode(): r for r in (source[0], source[1])}

  # masks are COCO's own: COCO.annToMask on the same annotation file, painted in order
  coco = COCO(str(root / "annotations" / "instances_val2014.json"))
  index = {1: 1, 18: 2, 90: 3}
  for image_id in (42, 44):
    want = np.zeros((coco.imgs[image_id]["height"], coco.imgs[image_id]["width"]), np.uint8)
    for ann in coco.imgToAnns[image_id]:
      want[coco.annToMask(ann) > 0] = 255 if ann["iscrowd"] else index[ann["category_id"]]
    assert np.array_equal(records[str(image_id)]["segmentation"][..., 0], want), image_id
  seg = records["42"]["segmentation"][..., 0]
  assert np.array_equal(seg == 3, rles["blob"]) and np.array_equal(seg == 255, rles["crowd"])  # both RLE kinds
  small = coco.annToMask(coco.anns[3]) > 0
  assert 0 < small.sum() < 10 and (seg[small] == 1).all()
  # PhraseCut's drawing (the original CLIPSeg's skimage polygon2mask) is not COCO's
  assert not np.array_equal(polygons_to_mask([np.reshape(SMALL, (-1, 2))], 40, 48), small)
  assert list(records["42"]["classes"]) == [1, 2, 3]

  # images: the files' own bytes (JPEG and PNG), decoding to PIL's pixels
  stored = stored_images("coco", "validation", tmp_path / "tfds")
  for info in val["images"]:
    path = root / "val2014" / info["file_name"]
    if str(info["id"]) in stored:
      assert stored[str(info["id"])] == path.read_bytes()
      assert np.array_equal(records[str(info["id"])]["image"], pil_rgb(path))
  assert stored["44"].startswith(b"\x89PNG")
  train = stored_images("coco", "train", tmp_path / "tfds")
  assert train == {"7": (root / "train2014" / "COCO_train2014_000000000007.jpg").read_bytes()}


@pytest.mark.parametrize(
  "segmentation, message",
  [
    ({"size": [40, 48], "counts": [5, 3]}, "RLE runs sum to 8"),
    ({"size": [40, 47], "counts": [40 * 47]}, "RLE is 40x47, image is 40x48"),
    ({"size": [40, 48], "counts": "0"}, "RLE runs sum to 0"),
    ([[1, 2]], "input type is not supported"),
  ],
)
def test_coco_malformed_segmentation_is_named(tmp_path, segmentation, message):
  root = tmp_path / "coco"
  val, _ = write_coco(root)
  val["annotations"][1]["segmentation"] = segmentation
  (root / "annotations" / "instances_val2014.json").write_text(json.dumps(val))
  with pytest.raises(
    ValueError, match=rf"instances_val2014.json: annotation 2 has a malformed segmentation: {message}"
  ):
    build("coco", data_dir=tmp_path / "tfds", manual_dir=root)


def test_coco_image_size_must_match_annotations(tmp_path):
  root = tmp_path / "coco"
  val, _ = write_coco(root)
  val["images"][0]["height"] = 41
  (root / "annotations" / "instances_val2014.json").write_text(json.dumps(val))
  with pytest.raises(
    ValueError, match=r"image 42 is 41x48 \(HxW\) there, but .*COCO_val2014_000000000042.jpg is 40x48"
  ):
    build("coco", data_dir=tmp_path / "tfds", manual_dir=root)


@pytest.mark.parametrize("shape", [(375, 500), (1, 1), (7, 9), (33, 17), (64, 64)])
def test_stored_masks_decode_as_pil_reads_them(shape):
  """`mask_feature` writes 1-bit PNGs that `decode_mask` unfilters itself (None/Sub/Up rows); other
  filters, 8-bit and interlaced PNGs go through PIL. Every one decodes to PIL's pixels."""
  rng = np.random.default_rng(shape[0] * shape[1])
  h, w = shape
  box = np.zeros(shape, bool)
  box[h // 4 : h // 2 + 1, w // 3 : w // 2 + 1] = True
  stripes = (np.arange(w)[None] // 3 + np.arange(h)[:, None]) % 2 == 0
  for mask in (rng.random(shape) < 0.3, box, stripes, np.zeros(shape, bool), np.ones(shape, bool)):
    stored = mask_feature(mask)
    assert stored.startswith(b"\x89PNG") and Image.open(io.BytesIO(stored)).mode == "1"
    assert np.array_equal(decode_mask(stored), mask)
    for mode, kwargs in (("L", {}), ("1", {"interlace": 1}), ("L", {"interlace": 1})):
      buf = io.BytesIO()
      Image.fromarray(mask).convert(mode).save(buf, "PNG", **kwargs)
      assert np.array_equal(decode_mask(buf.getvalue()), mask), (mode, kwargs)
  truncated = sources.LazyMasks([mask_feature(box)[:40]], "1234")
  with pytest.raises(ValueError, match="image 1234: mask 0 is not a readable image"):
    truncated[0]


def test_phrasecut_prepared_at_an_older_version_still_reads(phrasecut_dir, tmp_path, caplog):
  """Data prepared by 1.2.0 (PIL masks) is read as it is, with a warning that says how to rebuild."""
  import shutil

  from clipseg_jax.input_pipeline.builders.phrasecut import ClipsegPhrasecut

  build("phrasecut", data_dir=tmp_path / "tfds", manual_dir=phrasecut_dir)
  current = tmp_path / "tfds" / "clipseg_phrasecut" / str(ClipsegPhrasecut.VERSION)
  older = current.parent / "1.2.0"
  shutil.move(current, older)
  info = json.loads((older / "dataset_info.json").read_text())
  (older / "dataset_info.json").write_text(json.dumps({**info, "version": "1.2.0"}))
  with caplog.at_level("WARNING"):
    examples = list(raw_examples("phrasecut", "train", data_dir=tmp_path / "tfds"))
  assert len(examples) == 3 and "prepared at version 1.2.0" in caplog.text and "data build phrasecut" in caplog.text


def test_phrasecut_malformed_boxes_are_named(phrasecut_dir, tmp_path):
  tasks = json.loads((phrasecut_dir / "refer_train.json").read_text())
  tasks[2]["instance_boxes"] = [[1, 2, 3]]
  (phrasecut_dir / "refer_train.json").write_text(json.dumps(tasks))
  with pytest.raises(ValueError, match=r"record 2 \(task_id '2__a'\): instance_boxes must be a list of \[x, y, w, h\]"):
    build("phrasecut", data_dir=tmp_path / "tfds", manual_dir=phrasecut_dir)
