"""The one-shot protocols against re-implementations of the original's, written here from its definitions.

PASCAL-5i: PFENet's util/dataset.py `make_dataset` + `SemData.__getitem__` (Python's `random`, seeded 123 as
util/transform.py seeds it), `test_Resize` (cv2 INTER_LINEAR / INTER_NEAREST, here torch's bilinear without
antialias / nearest), datasets/pfe_dataset.py `PFEPascalWrapper.__getitem__` (label padded to the longer side
with 255), datasets/utils.py `blend_image_segmentation(..., 'crop_blur_highlight352')` = evaluation_utils.py
`img_preprocess` (cv2.GaussianBlur, here a torch convolution with OpenCV's kernel and reflect-101 borders;
`crop_mask`, `pad_to_square`, torch nearest), and metrics.py `FixedIntervalMetrics(resize_pred=True,
sigmoid=True)`. COCO-20i: hsnet's data/coco.py `DatasetCOCO.load_frame` (numpy's global random state) with
datasets/coco_wrapper.py's `Resize((352, 352))` (PIL bilinear), the same prompt and metric. The model is
transformers' CLIPSegForImageSegmentation on the same random weights as ours.
"""

import random

import numpy as np
import pytest
from PIL import Image

from clipseg_jax.evaluation.one_shot import pfenet_episodes, pfenet_size
from clipseg_jax.evaluation.protocols import EvalOptions, run_protocol
from clipseg_jax.input_pipeline import build

THRESHOLDS = np.linspace(0, 1, 51)[1:-1]


def write_noise_jpeg(path, h, w, seed):
  path.parent.mkdir(parents=True, exist_ok=True)
  rng = np.random.RandomState(seed)
  small = rng.randint(0, 256, (h // 4 + 1, w // 4 + 1, 3)).astype(np.uint8)  # blocky: survives JPEG
  Image.fromarray(small).resize((w, h), Image.BILINEAR).save(path, quality=95)


# ---- the original's pieces, in torch ---------------------------------------------------------------------


def original_blend_crop_blur_highlight352(img, seg, torch):
  """img_preprocess(blur=3, center_context=0.1, bg_fac=0.1, image_size=352) on a normalised [3, H, W] image
  and a float [H, W] mask."""
  import torch.nn.functional as F

  d = np.arange(15) - 7.0
  g = np.exp(-(d * d) / (2 * 3.0**2))
  k = torch.tensor((g / g.sum()).astype(np.float32))
  x = F.pad(img[:, None], (7, 7, 7, 7), mode="reflect")  # cv2's default border: reflect-101
  x = F.conv2d(x, k.view(1, 1, 1, 15))
  img_bl = F.conv2d(x, k.view(1, 1, 15, 1))[:, 0]
  img_inp = img * seg + 0.1 * img_bl * (1 - seg)
  # object_crop -> crop_mask(context=0.1), pad_to_square, nearest interpolate
  mask = seg
  bbox = [mask.max(0).values.argmax(), mask.size(0) - mask.max(0).values.flip(0).argmax()]
  bbox += [mask.max(1).values.argmax(), mask.size(1) - mask.max(1).values.flip(0).argmax()]
  bbox = [int(v) for v in bbox]
  width, height = (bbox[3] - bbox[2]), (bbox[1] - bbox[0])
  bbox[0] = int(max(0, bbox[0] - 0.1 * height))
  bbox[1] = int(min(mask.size(0), bbox[1] + 0.1 * height))
  bbox[2] = int(max(0, bbox[2] - 0.1 * width))
  bbox[3] = int(min(mask.size(1), bbox[3] + 0.1 * width))
  crop = img_inp[:, bbox[2] : bbox[3], bbox[0] : bbox[1]]
  h, w = crop.shape[1:]
  padx1 = pady1 = padx2 = pady2 = 0
  if h > w:
    padx1 = (h - w) // 2
    padx2 = h - w - padx1
  elif w > h:
    pady1 = (w - h) // 2
    pady2 = w - h - pady1
  crop = F.pad(crop, (padx1, padx2, pady1, pady2))
  return F.interpolate(crop[None], (352, 352))[0]


def original_counts(pred_logits, label_fg, valid, torch):
  """FixedIntervalMetrics.add with sigmoid=True, resize_pred=True: per-threshold tp, fp, fn, tn."""
  import torch.nn.functional as F

  p = torch.sigmoid(pred_logits)[None, None]
  p = F.interpolate(p, size=label_fg.shape[-2:], mode="bilinear", align_corners=True).flatten()
  g, m = label_fg.flatten(), valid.flatten().bool()
  p, g = p[m], g[m]
  out = []
  for t in THRESHOLDS:
    pos = p > t
    tp = int((pos & (g == 1)).sum())
    fp = int((pos & (g != 1)).sum())
    fn = int((~pos & (g == 1)).sum())
    out.append((tp, fp, fn, int(len(g)) - tp - fp - fn))
  return np.array(out, np.int64)


def original_curves(per_episode):
  """FixedIntervalMetrics.value's fgiou / biniou / mean IoU curves from [(class, counts [T, 4])]."""
  total = sum(c for _, c in per_episode)
  tp, fp, fn, tn = total.T
  fg = tp / (1 + tp + fp + fn)
  binary = 0.5 * fg + 0.5 * tn / (1 + tn + fn + fp)
  by_class = {}
  for cls, c in per_episode:
    by_class[cls] = by_class.get(cls, 0) + c
  miou = np.mean([c[:, 0] / (1 + c[:, 0] + c[:, 1] + c[:, 2]) for c in by_class.values()], axis=0)
  return {"iou_fg": fg, "iou_bin": binary, "miou": miou}


def hf_logits(ref, query, support, torch):
  with torch.no_grad():
    return ref(pixel_values=query[None], conditional_pixel_values=support[None]).logits.reshape(352, 352)


def check_numbers(ours, reference):
  for name, curve in reference.items():
    np.testing.assert_allclose(ours["curves"][name], curve, atol=1e-4, err_msg=name)
    assert ours[name]["fixed"]["0.3"] == pytest.approx(curve[14], abs=1e-4)  # THRESHOLDS[14] = 0.3
    assert ours[name]["fixed"]["0.1"] == pytest.approx(curve[4], abs=1e-4)
    assert ours[name]["value"] == pytest.approx(curve.max(), abs=1e-4)


def check_paper_columns(task, numbers, reference, columns):
  """The report's paper columns: ours at the paper's threshold (the mean of the one fold here) beside our best."""
  from clipseg_jax.evaluation.report import paper_columns

  got = {c["column"]: c for c in paper_columns(task, numbers)}
  for column, (name, index) in columns.items():
    assert got[column]["ours_pct"] == pytest.approx(100 * reference[name][index], abs=1e-2)
    assert got[column]["best_pct"] == pytest.approx(100 * reference[name].max(), abs=1e-2)


# ---- PASCAL-5i -------------------------------------------------------------------------------------------

# PFENet's layout: VOC2012/{JPEGImages, SegmentationClassAug (grayscale index PNGs), ImageSets}.
# Fold 0 (classes 1-5). 2007_000001 holds class 1 (large) and class 2 (small): the class is drawn; class 1's
# supports are 000001/000002, class 2's 000003/000004 (its 300 pixels in 000001 are under 2*32*32); 000005
# has only a small class 3 and is not listed; 000006 is fold 1's. Sizes cover test_Resize's cases: wider and
# taller than 352 (resized, sides floored to multiples of 8) and smaller (kept).
PASCAL = {  # id: (h, w, [(class, (y0, y1, x0, x1))])
  "2007_000001": (100, 400, [(1, (10, 90, 20, 120)), (2, (20, 40, 300, 315))]),
  "2007_000002": (370, 250, [(1, (100, 300, 50, 200))]),
  "2007_000003": (120, 160, [(2, (10, 110, 30, 130))]),
  "2007_000004": (200, 130, [(2, (50, 150, 0, 100)), (7, (0, 20, 0, 20))]),
  "2007_000005": (90, 90, [(3, (0, 30, 0, 30))]),
  "2007_000006": (100, 100, [(7, (0, 60, 0, 60))]),
}


def write_pfenet_voc(root):
  voc = root / "VOC2012"
  labels = {}
  for k, (name, (h, w, regions)) in enumerate(PASCAL.items()):
    write_noise_jpeg(voc / "JPEGImages" / f"{name}.jpg", h, w, k)
    seg = np.zeros((h, w), np.uint8)
    for c, (y0, y1, x0, x1) in regions:
      seg[y0:y1, x0:x1] = c
    seg[:, -3:] = 255  # void border
    (voc / "SegmentationClassAug").mkdir(parents=True, exist_ok=True)
    Image.fromarray(seg, "L").save(voc / "SegmentationClassAug" / f"{name}.png")
    labels[name] = seg
  (voc / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
  (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("".join(n + "\n" for n in PASCAL))
  (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000006\n")
  return voc


def original_pascal5i(voc, fold, ref, torch, seed=123):
  """score.py's pascal path for one split (fold), PFENet's val list = VOC's val.txt."""
  import torch.nn.functional as F

  sub_val_list = list(range(5 * fold + 1, 5 * fold + 6))
  names = (voc / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
  items = [(voc / "JPEGImages" / f"{n}.jpg", voc / "SegmentationClassAug" / f"{n}.png") for n in names]
  read_label = lambda p: np.asarray(Image.open(p))
  read_image = lambda p: np.float32(np.asarray(Image.open(p).convert("RGB")))
  # make_dataset
  data_list, files = [], {c: [] for c in sub_val_list}
  for item in items:
    label = read_label(item[1])
    kept = [
      c for c in np.unique(label).tolist() if c not in (0, 255) and c in sub_val_list and (label == c).sum() >= 2048
    ]
    if kept:
      data_list.append(item)
      for c in kept:
        files[c].append(item)
  rand = random.Random(seed)

  def find_new_hw(h, w, size=352):
    if max(h, w) <= size:
      return h, w
    if h >= w:
      new_h, new_w = size, int(w * (size * 1.0 / h))
    else:
      new_h, new_w = int(h * (size * 1.0 / w)), size
    return (new_h // 8) * 8 if new_h % 8 else new_h, (new_w // 8) * 8 if new_w % 8 else new_w

  def transform(image, label):  # test_Resize(352), ToTensor, Normalize
    new_h, new_w = find_new_hw(*image.shape[:2])
    img = torch.from_numpy(image).permute(2, 0, 1)[None]
    img = F.interpolate(img, (new_h, new_w), mode="bilinear", align_corners=False)[0]
    back = torch.zeros(3, 352, 352)
    back[:, :new_h, :new_w] = img
    lab = F.interpolate(torch.from_numpy(label.astype(np.float32))[None, None], (new_h, new_w), mode="nearest")[0, 0]
    back_lab = torch.ones(352, 352) * 255
    back_lab[:new_h, :new_w] = lab
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None] * 255
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None] * 255
    return (back - mean) / std, back_lab.long()

  per_episode, episodes = [], []
  for image_path, label_path in data_list:  # SemData.__getitem__, in order
    image, label = read_image(image_path), read_label(label_path).copy()
    label_class = [c for c in np.unique(label).tolist() if c not in (0, 255) and c in sub_val_list]
    class_chosen = label_class[rand.randint(1, len(label_class)) - 1]
    target, ignore = np.where(label == class_chosen), np.where(label == 255)
    label[:, :] = 0
    label[target] = 1
    label[ignore] = 255
    file_class_chosen = files[class_chosen]
    support_idx = rand.randint(1, len(file_class_chosen)) - 1
    support_image_path, support_label_path = image_path, label_path
    while support_image_path == image_path and support_label_path == label_path:
      support_idx = rand.randint(1, len(file_class_chosen)) - 1
      support_image_path, support_label_path = file_class_chosen[support_idx]
    s_image, s_label = read_image(support_image_path), read_label(support_label_path).copy()
    target, ignore = np.where(s_label == class_chosen), np.where(s_label == 255)
    s_label[:, :] = 0
    s_label[target] = 1
    s_label[ignore] = 255
    raw_label = label.copy()
    query, _ = transform(image, label)
    s_x, s_y = transform(s_image, s_label)
    # PFEPascalWrapper: the original label padded to its longer side with 255
    side = max(raw_label.shape)
    back = torch.ones(side, side) * 255
    back[: raw_label.shape[0], : raw_label.shape[1]] = torch.from_numpy(raw_label.astype(np.float32))
    support = original_blend_crop_blur_highlight352(s_x, (s_y == 1).float(), torch)
    logits = hf_logits(ref, query, support, torch)
    per_episode.append((class_chosen, original_counts(logits, (back == 1).float(), back != 255, torch)))
    episodes.append((image_path.stem, class_chosen, support_image_path.stem))
  return per_episode, episodes


@pytest.fixture(scope="module")
def pascal_data(tmp_path_factory):
  root = tmp_path_factory.mktemp("pfenet")
  voc = write_pfenet_voc(root)
  data_dir = root / "tfds"
  build("pascal_voc", data_dir=data_dir, manual_dir=root)
  return voc, data_dir


def test_pascal5i_matches_the_original(pascal_data, tiny_checkpoint, torch):
  from clipseg_jax import load_model

  voc, data_dir = pascal_data
  directory, ref = tiny_checkpoint
  per_episode, episodes = original_pascal5i(voc, 0, ref, torch)
  assert [e[0] for e in episodes] == ["2007_000001", "2007_000002", "2007_000003", "2007_000004"]
  assert episodes[1:] == [
    ("2007_000002", 1, "2007_000001"),
    ("2007_000003", 2, "2007_000004"),
    ("2007_000004", 2, "2007_000003"),
  ]
  opts = EvalOptions(data_dir=str(data_dir), fold=0, progress=False)
  numbers, examples = run_protocol(load_model(directory), "pascal5i", opts)
  fold = numbers["fold0"]
  assert fold["episodes"] == 4 and len(examples) == 4
  reference = original_curves(per_episode)
  check_numbers(fold, reference)
  check_paper_columns(
    "pascal5i", numbers, reference, {"mIoU (t=0.3)": ("miou", 14), "IoU_BIN (t=0.3)": ("iou_bin", 14)}
  )


def test_pfenet_episodes_follow_semdata():
  counts = np.zeros((5, 256), np.int64)
  counts[0, [1, 2]] = [3000, 10]  # class 2 present but small: drawable, never a support
  counts[1, 1] = 2048
  counts[2, 2] = 5000
  counts[3, 2] = 2100
  counts[4, 3] = 100  # no fold class large enough: not listed
  seen = set()
  for seed in range(8):
    got = pfenet_episodes(counts, [1, 2, 3, 4, 5], random.Random(seed))
    c0 = [1, 2][random.Random(seed).randint(1, 2) - 1]  # SemData's first draw picks the class
    assert got[0][:2] == (0, c0) and got[0][2] in ((1,) if c0 == 1 else (2, 3))
    assert got[1:] == [(1, 1, 0), (2, 2, 3), (3, 2, 2)]
    seen.add(c0)
  assert seen == {1, 2}
  with pytest.raises(ValueError, match="image a: its class 1 has no other image"):
    pfenet_episodes(counts[1:3], [1, 2], random.Random(0), ids=["a", "b"])


@pytest.mark.parametrize("h,w", [(500, 375), (375, 500), (352, 100), (353, 353), (100, 60), (333, 500)])
def test_pfenet_size(h, w):
  new_h, new_w = pfenet_size(h, w)
  if max(h, w) <= 352:
    assert (new_h, new_w) == (h, w)
  else:
    assert max(new_h, new_w) == 352 and new_h % 8 == 0 and new_w % 8 == 0
    assert abs(min(new_h, new_w) - min(h, w) * 352 / max(h, w)) < 8


# ---- COCO-20i --------------------------------------------------------------------------------------------

# hsnet's layout: COCO2014/{val2014/NAME.jpg, annotations/val2014/NAME.png}, label value = class index + 1.
# Every fold-0 class (hsnet ids 0, 4, ..., 76: values 1, 5, ..., 77) is in two or three of the images, as
# vertical stripes; value 2 (fold 1) and a region of 255 are there too (no ignore label: background).
COCO_NAMES = [f"COCO_val2014_{i:012d}" for i in (42, 73, 139)]


def write_hsnet_coco(root):
  base = root / "COCO2014"
  fold0 = [4 * k + 1 for k in range(20)]
  for k, name in enumerate(COCO_NAMES):
    h, w = (90, 160) if k != 1 else (200, 120)
    write_noise_jpeg(base / "val2014" / f"{name}.jpg", h, w, 10 + k)
    seg = np.zeros((h, w), np.uint8)
    stripes = fold0 if k != 2 else fold0[::2]
    for j, c in enumerate(stripes):
      x0 = (j * w) // len(stripes)
      seg[10 + 3 * k : h - 10, x0 : x0 + max(2, w // len(stripes) - 1 - k)] = c
    seg[:8, :30] = 2
    seg[-6:, -20:] = 255
    (base / "annotations" / "val2014").mkdir(parents=True, exist_ok=True)
    Image.fromarray(seg, "L").save(base / "annotations" / "val2014" / f"{name}.png")
  return base


def original_coco20i(base, fold, n_episodes, ref, torch, seed=0):
  """score.py's coco path: COCOWrapper('test', fold, image_size=352, mask='crop_blur_highlight352') over hsnet's
  DatasetCOCO, episodes drawn by `load_frame` from numpy's global state seeded `seed`. hsnet's class lists
  (its pickles) are the val images holding the class, in name order."""
  import torch.nn.functional as F

  names = sorted(f"val2014/{n}.jpg" for n in COCO_NAMES)
  masks = {n: np.asarray(Image.open(base / "annotations" / n.replace(".jpg", ".png"))) for n in names}
  class_ids = [fold + 4 * v for v in range(20)]
  classwise = {c: [n for n in names if (masks[n] == c + 1).any()] for c in class_ids}
  mean, std = np.float32([0.485, 0.456, 0.406]), np.float32([0.229, 0.224, 0.225])

  def transform(name):  # Resize((352, 352)) on PIL, ToTensor, Normalize
    pil = Image.open(base / name).convert("RGB").resize((352, 352), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(pil, np.float32) / 255).permute(2, 0, 1)
    return (x - torch.from_numpy(mean)[:, None, None]) / torch.from_numpy(std)[:, None, None]

  def read_mask(name, c):
    m = torch.tensor(masks[name].astype(np.int64))
    m[m != c + 1] = 0
    m[m == c + 1] = 1
    return F.interpolate(m[None, None].float(), (352, 352), mode="nearest")[0, 0]

  np.random.seed(seed)
  per_episode, episodes = [], []
  for _ in range(n_episodes):
    class_sample = np.random.choice(class_ids, 1, replace=False)[0]
    query_name = np.random.choice(classwise[class_sample], 1, replace=False)[0]
    while True:
      support_name = np.random.choice(classwise[class_sample], 1, replace=False)[0]
      if query_name != support_name:
        break
    query, query_mask = transform(query_name), read_mask(query_name, class_sample)
    support = original_blend_crop_blur_highlight352(
      transform(support_name), read_mask(support_name, class_sample), torch
    )
    logits = hf_logits(ref, query, support, torch)
    per_episode.append((int(class_sample), original_counts(logits, query_mask, torch.ones(352, 352), torch)))
    episodes.append((query_name, int(class_sample), support_name))
  return per_episode, episodes


@pytest.fixture(scope="module")
def coco_data(tmp_path_factory):
  root = tmp_path_factory.mktemp("hsnet")
  base = write_hsnet_coco(root)
  data_dir = root / "tfds"
  build("coco", data_dir=data_dir, manual_dir=root)
  return base, data_dir


def test_coco20i_matches_the_original(coco_data, tiny_checkpoint, torch):
  from clipseg_jax import load_model

  base, data_dir = coco_data
  directory, ref = tiny_checkpoint
  per_episode, episodes = original_coco20i(base, 0, 6, ref, torch)
  assert len({e[1] for e in episodes}) > 1  # several classes drawn
  opts = EvalOptions(data_dir=str(data_dir), fold=0, episodes=6, progress=False)
  numbers, _ = run_protocol(load_model(directory), "coco20i", opts)
  reference = original_curves(per_episode)
  check_numbers(numbers["fold0"], reference)
  check_paper_columns("coco20i", numbers, reference, {"mIoU (t=0.1)": ("miou", 4), "IoU_BIN (t=0.1)": ("iou_bin", 4)})


def test_hsnet_layout_is_read_as_is(coco_data):
  from clipseg_jax.evaluation.one_shot import SemanticRecords

  base, data_dir = coco_data
  records = SemanticRecords("coco", "validation", data_dir)
  assert records.ids == sorted(f"val2014/{n}.jpg" for n in COCO_NAMES)
  for i, name in enumerate(records.ids):
    want = np.asarray(Image.open(base / "annotations" / name.replace(".jpg", ".png")))
    np.testing.assert_array_equal(records.segmentation(i), want)  # 255 kept as written, no crowd ignore added
    assert records.classes[i] == sorted(int(c) for c in np.unique(want) if 0 < c <= 80)
    np.testing.assert_array_equal(records.image(i), np.asarray(Image.open(base / name).convert("RGB")))


def test_coco20i_needs_two_images_per_class(coco_data):
  _, data_dir = coco_data
  opts = EvalOptions(data_dir=str(data_dir), fold=1, episodes=2, progress=False)
  with pytest.raises(ValueError, match="class 6 is in fewer than two images"):
    run_protocol(Oracle(), "coco20i", opts)


class Oracle:
  def one_shot_probabilities(self, query, support):
    return np.zeros(query.shape[:2], np.float32)


def test_hsnet_label_values_are_checked(tmp_path):
  base = write_hsnet_coco(tmp_path)
  png = base / "annotations" / "val2014" / f"{COCO_NAMES[0]}.png"
  seg = np.asarray(Image.open(png)).copy()
  seg[0, 0] = 90
  Image.fromarray(seg, "L").save(png)
  with pytest.raises(ValueError, match=f"{COCO_NAMES[0]}.png: label values \\[90\\]"):
    build("coco", data_dir=tmp_path / "tfds", manual_dir=tmp_path)
