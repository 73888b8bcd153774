"""Instances and clean masks on hand-drawn masks (boxes, areas, scores, holes, disks known by hand), against
scipy.ndimage on random ones, and through the CLI on the embedded model."""

import json

import numpy as np
import pytest
import scipy.ndimage as ndi
from PIL import Image

from clipseg_jax import instances as inst
from clipseg_jax.cli.main import main


def drawn() -> np.ndarray:
  """A 10x12 map: a 3x4 block at 0.8, a 2x2 block at 0.6 touching it only at a corner, a lone pixel at 0.9."""
  p = np.zeros((10, 12), np.float32)
  p[1:4, 1:5] = 0.8  # rows 1-3, cols 1-4: 12 pixels
  p[4:6, 5:7] = 0.6  # rows 4-5, cols 5-6: 4 pixels, diagonal neighbour of (3, 4)
  p[8, 10] = 0.9
  return p


def test_instances_boxes_areas_scores_by_hand():
  found = inst.instances(drawn(), 0.5, connectivity=4)
  assert [(i.box, i.area, round(i.score, 6)) for i in found] == [
    ((10, 8, 11, 9), 1, 0.9),  # highest score first; boxes (x0, y0, x1, y1), x1/y1 exclusive
    ((1, 1, 5, 4), 12, 0.8),
    ((5, 4, 7, 6), 4, 0.6),
  ]
  assert found[1].mask.sum() == 12 and found[1].mask[1:4, 1:5].all()
  eight = inst.instances(drawn(), 0.5)  # 8-connected: the corner joins the two blocks
  assert [(i.box, i.area) for i in eight] == [((10, 8, 11, 9), 1), ((1, 1, 7, 6), 16)]
  assert eight[1].score == pytest.approx((12 * 0.8 + 4 * 0.6) / 16)
  assert [i.area for i in inst.instances(drawn(), 0.5, min_area=2, connectivity=4)] == [12, 4]
  assert [i.area for i in inst.instances(drawn(), 0.7, connectivity=4)] == [1, 12]  # threshold is strict
  assert inst.instances(np.zeros((4, 4)), 0.5) == []


def test_fill_holes_by_hand():
  p = np.zeros((9, 9), np.float32)
  p[1:6, 1:6] = 1.0
  p[2:5, 2:5] = 0.0  # a 3x3 hole
  p[7:9, 3:9] = 1.0
  p[8, 5] = 0.0  # a notch open to the border: not a hole
  filled = inst.clean_mask(p, fill_holes=True)
  expected = p > 0.5
  expected[2:5, 2:5] = True
  assert np.array_equal(filled, expected)
  assert np.array_equal(inst.clean_mask(p, fill_holes=8), p > 0.5)  # holes of at most 8 pixels only
  assert np.array_equal(inst.clean_mask(p, fill_holes=9), expected)


def test_erode_and_dilate_by_disks_by_hand():
  dot = np.zeros((7, 7), np.float32)
  dot[3, 3] = 1
  plus = np.zeros((7, 7), bool)
  plus[3, 2:5] = plus[2:5, 3] = True  # the radius-1 disk: x^2 + y^2 <= 1
  assert np.array_equal(inst.clean_mask(dot, dilate=1), plus)
  disk2 = inst.clean_mask(dot, dilate=2)
  assert disk2.sum() == 13 and disk2[1, 3] and not disk2[1, 2]  # x^2 + y^2 <= 4: 13 pixels
  square = np.zeros((9, 9), np.float32)
  square[2:7, 2:7] = 1
  eroded = inst.clean_mask(square, erode=1)
  assert eroded.sum() == 9 and eroded[3:6, 3:6].all()
  edge = np.zeros((6, 6), np.float32)
  edge[:, :3] = 1  # touches the border: the mask continues beyond it, so erosion only eats the inner side
  assert np.array_equal(inst.clean_mask(edge, erode=1), np.pad(np.ones((6, 2), bool), ((0, 0), (0, 4))))
  opened = inst.clean_mask(drawn(), erode=1, dilate=1)  # an opening removes what the disk cannot fit in
  assert not opened[8, 10] and not opened[4:6, 5:7].any() and opened[2, 2]


def test_min_area_and_feather():
  p = drawn()
  kept = inst.clean_mask(p, min_area=5, connectivity=4)
  assert np.array_equal(kept, (p == np.float32(0.8)))
  soft = inst.clean_mask(p, min_area=5, connectivity=4, feather=1.5)
  assert soft.dtype == np.float32 and 0 <= soft.min() and soft.max() <= 1
  reference = ndi.gaussian_filter(kept.astype(np.float64), 1.5, mode="nearest", truncate=4.0)
  np.testing.assert_allclose(soft, reference, atol=1e-6)


def test_against_scipy_on_random_masks():
  rng = np.random.default_rng(0)
  for _ in range(2):
    p = ndi.gaussian_filter(rng.random((48, 56)), 1.5)
    p = (p - p.min()) / (p.max() - p.min())
    m = p > 0.5
    for connectivity, structure in ((4, None), (8, np.ones((3, 3)))):
      labels, n = inst.label_components(m, connectivity)
      ref, n_ref = ndi.label(m, structure)
      assert n == n_ref and np.array_equal(labels, ref)
      found = inst.instances(p, 0.5, connectivity=connectivity)
      boxes = sorted(i.box for i in found)
      assert boxes == sorted((s[1].start, s[0].start, s[1].stop, s[0].stop) for s in ndi.find_objects(ref))
    assert np.array_equal(inst.clean_mask(p, fill_holes=True), ndi.binary_fill_holes(m))
    disk = inst._disk(3).astype(bool)
    assert np.array_equal(inst.clean_mask(p, dilate=3), ndi.binary_dilation(m, disk))
    assert np.array_equal(inst.clean_mask(p, erode=3), ndi.binary_erosion(m, disk, border_value=1))


@pytest.mark.parametrize(
  "options, words",
  [
    (dict(min_area=-1), "min_area must be"),
    (dict(dilate=1.5), "dilate must be"),
    (dict(feather=-2), "feather must be"),
    (dict(connectivity=6), "connectivity must be 4 or 8"),
    (dict(threshold=2), "threshold must be in"),
  ],
)
def test_bad_options(options, words):
  with pytest.raises(ValueError, match=words):
    inst.clean_mask(drawn(), **options)
  with pytest.raises(ValueError, match=r"must be \[H, W\]"):
    inst.instances(np.zeros((2, 3, 4)))


def test_cli_instances_and_clean_masks_on_the_embedded_model(tmp_path, capsys):
  from clipseg_jax.input_pipeline import synthetic

  examples, _ = synthetic.scene_examples(0, 0)
  Image.fromarray(examples[0]["image"]).save(tmp_path / "scene.png")
  out = tmp_path / "out"
  args = ["segment", str(tmp_path / "scene.png"), "--prompt", "the star", "--out", str(out), "--instances"]
  assert main([*args, "--min-area", "30", "--fill-holes", "--dilate", "1", "--feather", "1"]) == 0
  doc = json.loads((out / "scene_instances.json").read_text())
  rows = doc["prompts"][0]["instances"]
  assert doc["prompts"][0]["prompt"] == "the star" and len(rows) >= 1
  scores = [r["score"] for r in rows]
  assert scores == sorted(scores, reverse=True) and all(r["area"] >= 30 for r in rows)
  for r in rows:
    soft = np.asarray(Image.open(out / r["file"]))
    assert soft.shape == (256, 256) and len(np.unique(soft)) > 2  # feathered edges
    x0, y0, x1, y1 = r["box"]
    assert (soft[y0:y1, x0:x1] == 255).sum() > 0
  mask = np.asarray(Image.open(out / "scene_0_the-star_mask.png"))
  assert len(np.unique(mask)) > 2  # the cleaned, feathered mask
  assert main(args) == 2  # refuses to overwrite the earlier instances
  assert "already exists" in capsys.readouterr().err
  # --overwrite replaces this image's instances whole (an earlier run's extra ones go), nobody else's.
  stale, other = out / f"scene_0_the-star_instance{len(rows) + 1}.png", out / "scene_0_the-star_instance1_x.png"
  stale.write_bytes(b"earlier run"), other.write_bytes(b"not ours")
  assert main([*args, "--min-area", "30", "--overwrite"]) == 0
  assert not stale.exists() and other.exists()


def test_instances_at_a_fixed_size_report_image_pixels():
  """A server's instances: found at the model's output size (one compiled shape), boxes and areas given
  back in the image's pixels."""
  prob = np.zeros((64, 96), np.float32)
  prob[8:24, 12:36] = 0.9  # 16 x 24 px
  prob[40:56, 60:90] = 0.7  # 16 x 30 px
  prob[2:3, 2:3] = 0.9  # a speck, below min_area
  found = inst.instances_at(prob, 32, 0.5, min_area=20, limit=5)
  assert [f["score"] for f in found] == sorted((f["score"] for f in found), reverse=True) and len(found) == 2
  for f, (x0, y0, x1, y1) in zip(found, [(12, 8, 36, 24), (60, 40, 90, 56)]):
    assert np.abs(np.array(f["box"]) - [x0, y0, x1, y1]).max() <= 3  # one analysis pixel is 3 x 2 image px
    assert abs(f["area"] - (x1 - x0) * (y1 - y0)) <= 0.25 * (x1 - x0) * (y1 - y0)
  assert len(inst.instances_at(prob, 32, 0.5, min_area=20, limit=1)) == 1


def test_a_limit_keeps_the_best_instances_only():
  """Masks are built for the kept instances only (a speckled map holds thousands of components)."""
  prob = np.zeros((40, 40), np.float32)
  prob[::4, ::4] = np.linspace(0.6, 0.99, 100).reshape(10, 10)  # 100 one-pixel components
  every = inst.instances(prob, 0.5)
  best = inst.instances(prob, 0.5, limit=3)
  assert len(every) == 100 and [i.box for i in best] == [i.box for i in every[:3]]
  assert best[0].score == max(i.score for i in every)
