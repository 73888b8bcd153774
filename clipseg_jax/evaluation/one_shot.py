"""The one-shot protocols, PASCAL-5i and COCO-20i, as the original CLIPSeg's `score.py` runs them.

PASCAL-5i: score.py (`test_dataset == 'pascal'`) over datasets/pfe_dataset.py `PFEPascalWrapper(mode='val')`,
which wraps PFENet's util/dataset.py `SemData` and util/transform.py `test_Resize`:
  - episodes (`make_dataset`): one per image of the val list (image-id order), keeping the images with a
    fold class of at least 2*32*32 pixels; the same filter makes each class's list of supports;
  - per episode (`SemData.__getitem__`, Python's `random`, which PFENet's transform module seeds with 123
    when imported): the class drawn among ALL the fold classes in the query (no size filter), one support
    index drawn and discarded, then drawn again until the support is not the query;
  - query and support (`test_Resize(352)`): an image with a side over 352 is resized to longer side 352, the
    other int(side * ratio), both floored to multiples of 8, bilinear without antialias (cv2 INTER_LINEAR)
    on float pixels, and put top-left on a black 352 x 352 canvas (pixel 0 before normalisation); labels
    (class 1, void 255, else 0) nearest (cv2 INTER_NEAREST) on a 255 canvas;
  - the support prompt: `crop_blur_highlight352` of the normalised support canvas and its label == 1;
  - scoring (`PFEPascalWrapper.__getitem__`, `FixedIntervalMetrics(resize_pred=True, sigmoid=True)`): the
    sigmoid of the 352 x 352 logits, bilinear with align_corners=True to L x L (L: the query's longer side),
    against the query's own label padded to L x L with 255 (ignored); the class is the episode's class.
COCO-20i: score.py (`test_dataset == 'coco'`) over datasets/coco_wrapper.py `COCOWrapper`, i.e. hsnet's
data/coco.py `DatasetCOCO` with a `Resize((352, 352))` transform:
  - 1000 episodes per fold (hsnet's val length): a class uniform among the fold's 20 (hsnet's val `class_ids`
    4k + fold, label value class + 1: `classes.coco20i_fold`), the query uniform among the class's images,
    the support uniform among them until it is not the query;
  - images: PIL bilinear to 352 x 352 (torchvision's Resize on PIL images), normalised; masks: label ==
    class, everything else 0 (no ignore label), torch nearest to 352 x 352;
  - the support prompt: `crop_blur_highlight352` of the 352 support; scoring at 352 x 352 (resize_pred is the
    identity there); the class is the episode's class.

Where the original cannot run as published: score.py builds the PASCAL metric as
`FixedIntervalMetrics(resize_pred=True, sigmoid=True, custom_threshold=shift, **metric_args)`, and
pascal_1shot.yaml's test configuration puts `sigmoid` (and, per model, `custom_threshold`) in `metric_args`
too: Python raises "got multiple values for keyword argument" before any episode (and with shift 0 the
custom-threshold lookup `threshold_values.index(0)` would fail as well). We apply the sigmoid once, to the
unshifted logits (shift 0, its default), as coco.yaml's path does, and report the 49 thresholds: the paper's
columns at t = 0.3 (PASCAL, Tables.ipynb) and 0.1 (COCO) beside the best threshold.
Random draws: PASCAL uses Python's `random.Random(123 + seed)` with SemData's calls, so seed 0 repeats the
original's episodes for a one-fold run (pascal_1shot.yaml's per-fold models). COCO makes hsnet's numpy calls
on `RandomState(seed)` per fold: hsnet's episodes after `np.random.seed(seed)` in one process (the original
drew them in DataLoader workers, whose seeds are not reproducible).
"""

from __future__ import annotations

import io
import random

import numpy as np
from PIL import Image

from clipseg_jax import preprocess, prompts
from clipseg_jax.evaluation.common import N_EXAMPLES, average_numbers, binary_numbers, limit, mine, progress
from clipseg_jax.evaluation.predictor import NoPromptPredictor
from clipseg_jax.metrics import Accumulator
from clipseg_jax.metrics.binary import confusion_counts

PFENET_SEED = 123  # PFENet util/transform.py: random.seed(123) on import
MIN_PIXELS = 2 * 32 * 32  # PFENet make_dataset: a class counts when it has this many pixels
CANVAS = 352  # pascal_1shot.yaml / coco.yaml test image_size (test_Resize size, COCOWrapper Resize)
SUPPORT_MODE = "crop_blur_highlight352"  # the paper's one-shot prompt (the yamls' pas_h2 / coco_h2 mask)
IGNORE = 255


# ---- reading a prepared semantic split (PASCAL VOC, COCO) -------------------------------------------------


class SemanticRecords:
  """A prepared semantic split (`builders.common.semantic_features`), records sorted by image id (the
  original's list order), each field decoded on its own: ids and class lists without decoding pixels,
  images with PIL (as PFENet's cv2 and hsnet's PIL read them; TFDS would decode JPEGs with TensorFlow)."""

  def __init__(self, name: str, split: str, data_dir):
    from tensorflow.core.example import example_pb2

    from clipseg_jax.input_pipeline.sources import prepared_source

    raw = prepared_source(name, split, data_dir).data_source
    self._raw, self._parse = raw, example_pb2.Example.FromString
    rows = []
    for i in range(len(raw)):
      feature = self._parse(raw[i]).features.feature
      image_id = feature["image_id"].bytes_list.value[0].decode()
      rows.append((image_id, i, [int(c) for c in feature["classes"].int64_list.value]))
    rows.sort()
    self.ids = [r[0] for r in rows]
    self._index = [r[1] for r in rows]
    self.classes = [r[2] for r in rows]  # classes present in each label map (1-based, no 0 / 255)

  def __len__(self):
    return len(self.ids)

  def _feature(self, i: int):
    return self._parse(self._raw[self._index[i]]).features.feature

  def image(self, i: int) -> np.ndarray:
    """uint8 [H, W, 3] as PIL decodes the stored file."""
    from clipseg_jax.input_pipeline.sources import decode_image

    return decode_image(self._feature(i)["image"].bytes_list.value[0])

  def segmentation(self, i: int) -> np.ndarray:
    """uint8 [H, W] class indices (255: void)."""
    with Image.open(io.BytesIO(self._feature(i)["segmentation"].bytes_list.value[0])) as im:
      seg = np.asarray(im)
    return seg[..., 0] if seg.ndim == 3 else seg


# ---- PFENet's test_Resize ---------------------------------------------------------------------------------


def pfenet_size(h: int, w: int, size: int = CANVAS) -> tuple[int, int]:
  """PFENet's `test_Resize.find_new_hw`: an image with a side over `size` gets longer side `size` and the
  other int(side * size / longer), both floored to a multiple of 8; a smaller one keeps its size."""
  if max(h, w) <= size:
    return h, w
  if h >= w:
    new_h, new_w = size, int(w * (size * 1.0 / h))
  else:
    new_h, new_w = int(h * (size * 1.0 / w)), size
  return new_h // 8 * 8, new_w // 8 * 8


def cv2_nearest_indices(n_in: int, n_out: int) -> np.ndarray:
  """Source indices of cv2's INTER_NEAREST: floor(dst * in / out) in double precision, clipped."""
  return np.minimum(np.floor(np.arange(n_out) * (n_in / n_out)).astype(np.int64), n_in - 1)


def linear_resize(image: np.ndarray, h: int, w: int) -> np.ndarray:
  """float32 [h, w, C] of an [H, W, C] image, bilinear as cv2's INTER_LINEAR (and torch's align_corners=False
  without antialias): src = (dst + 0.5) * in / out - 0.5, clamped to the borders."""
  image = np.asarray(image, np.float32)
  if image.shape[:2] == (h, w):
    return image.copy()
  rows = preprocess.bilinear_matrix(image.shape[0], h)
  cols = preprocess.bilinear_matrix(image.shape[1], w)
  out = np.einsum("ij,jkc->ikc", rows, image.astype(np.float64))
  return np.einsum("lk,ikc->ilc", cols, out).astype(np.float32)


def test_resize(image: np.ndarray, label: np.ndarray, size: int = CANVAS) -> tuple[np.ndarray, np.ndarray]:
  """PFENet's `test_Resize`: (float32 [size, size, 3] pixels 0..255 on a black canvas, uint8 [size, size]
  label on a 255 canvas), both put top-left."""
  h, w = pfenet_size(*label.shape, size)
  canvas = np.zeros((size, size, 3), np.float32)
  canvas[:h, :w] = linear_resize(image, h, w)
  lab = np.full((size, size), IGNORE, np.uint8)
  lab[:h, :w] = label[cv2_nearest_indices(label.shape[0], h)][:, cv2_nearest_indices(label.shape[1], w)]
  return canvas, lab


def binary_label(seg: np.ndarray, c: int) -> np.ndarray:
  """PFENet's episode label: 1 where the class is, 255 where void, 0 elsewhere."""
  return np.where(seg == c, 1, np.where(seg == IGNORE, IGNORE, 0)).astype(np.uint8)


def normalized(pixels: np.ndarray) -> np.ndarray:
  """Float pixels 0..255 -> ImageNet-normalised float32, as PFENet's Normalize(mean*255, std*255)."""
  return ((np.asarray(pixels, np.float32) - preprocess.MEAN * 255) / (preprocess.STD * 255)).astype(np.float32)


def support_prompt(pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """`crop_blur_highlight352` of a support canvas (float or uint8 pixels 0..255) and its bool mask."""
  recipe, size = prompts.parse_mode(SUPPORT_MODE)
  return np.ascontiguousarray(prompts.crop_prompt(pixels, mask, recipe, size), np.float32)


# ---- episodes ---------------------------------------------------------------------------------------------


def pfenet_episodes(counts, fold_classes, rng: random.Random, min_pixels: int = MIN_PIXELS, ids=None):
  """[(query, class, support)] record indices, one per image of PFENet's filtered list, drawn as
  `SemData.__getitem__` draws them. counts[i][c]: pixels of class c in image i (list order)."""
  fold_classes = sorted(fold_classes)
  files = {c: [i for i, n in enumerate(counts) if n[c] >= min_pixels] for c in fold_classes}
  episodes = []
  for q, n in enumerate(counts):
    if not any(n[c] >= min_pixels for c in fold_classes):
      continue
    present = [c for c in fold_classes if n[c] > 0]  # np.unique order
    c = present[rng.randint(1, len(present)) - 1]
    candidates = files[c]
    if not any(s != q for s in candidates):
      name = ids[q] if ids is not None else q
      raise ValueError(
        f"image {name}: its class {c} has no other image with {min_pixels} of its pixels to be the support "
        "(PFENet would loop forever here)"
      )
    s = candidates[rng.randint(1, len(candidates)) - 1]  # SemData's first draw, always replaced
    s = q
    while s == q:
      s = candidates[rng.randint(1, len(candidates)) - 1]
    episodes.append((q, c, s))
  return episodes


def hsnet_episodes(images_of, fold_classes, n: int, rng: np.random.RandomState):
  """[(query, class, support)] drawn with hsnet's `load_frame` calls (numpy `choice(..., 1, replace=False)`:
  the class among the fold's, the query among the class's images, the support again until it is not the
  query), so a RandomState seeded s gives hsnet's episodes after `np.random.seed(s)`."""
  for c in fold_classes:
    if len(set(images_of.get(c, ()))) < 2:
      raise ValueError(f"COCO-20i class {c} is in fewer than two images of the split: no episode can use it")
  episodes = []
  for _ in range(n):
    c = int(rng.choice(fold_classes, 1, replace=False)[0])
    q = s = int(rng.choice(images_of[c], 1, replace=False)[0])
    while s == q:
      s = int(rng.choice(images_of[c], 1, replace=False)[0])
    episodes.append((q, c, s))
  return episodes


# ---- model ------------------------------------------------------------------------------------------------


def episode_probabilities(predictor, query: np.ndarray, support: np.ndarray) -> np.ndarray:
  """[S, S] sigmoid of the logits for a normalised query canvas and an engineered support prompt (both
  float32 [S, S, 3]). A predictor may define `one_shot_probabilities(query, support)` (tests' oracles);
  a `ModelPredictor` runs its ClipSeg, with a zero condition for the prompt-withheld ablation."""
  own = getattr(predictor, "one_shot_probabilities", None)
  if own is not None:
    return np.asarray(own(query, support), np.float32)
  model = predictor.model
  if isinstance(predictor, NoPromptPredictor):
    cond = dict(conditional_embeddings=np.zeros((1, model.config.projection_dim), np.float32))
  else:
    cond = dict(conditional_pixel_values=support[None])
  logits = np.asarray(model(query[None], **cond)[0], np.float32)
  return preprocess.sigmoid(logits)


# ---- protocols --------------------------------------------------------------------------------------------


def _folds(opts):
  return range(4) if opts.fold is None else [opts.fold]


def _finish(per_fold: dict, opts):
  numbers = {}
  for f, (acc, episodes) in per_fold.items():
    numbers[f"fold{f}"] = {**binary_numbers(acc.allreduce(), opts.threshold), "episodes": episodes}
  numbers["mean"] = average_numbers([numbers[f"fold{f}"] for f in per_fold])
  return numbers


def pascal5i(predictor, opts):
  """PASCAL-5i one-shot as PFEPascalWrapper + score.py (module docstring); `opts.episodes` does not apply
  (one episode per listed image), `opts.limit` keeps the first N."""
  from clipseg_jax.input_pipeline.classes import pascal5i_fold

  records = SemanticRecords(opts.dataset or "pascal_voc", opts.split or "val", opts.data_dir)
  counts = [np.bincount(records.segmentation(i).ravel(), minlength=256) for i in range(len(records))]
  per_fold, examples = {}, []
  for fold in _folds(opts):
    rng = random.Random(PFENET_SEED + opts.seed)
    episodes = pfenet_episodes(counts, pascal5i_fold(fold), rng, ids=records.ids)
    if not episodes:
      raise ValueError(f"PASCAL-5i fold {fold}: no image has a fold class with {MIN_PIXELS} pixels")
    acc, n = Accumulator(), limit(len(episodes), opts)
    for e in progress(range(n), n, f"pascal5i fold {fold}", opts):
      if not mine(e):
        continue
      q, c, s = episodes[e]
      label = binary_label(records.segmentation(q), c)
      query, _ = test_resize(records.image(q), label)
      support, support_label = test_resize(records.image(s), binary_label(records.segmentation(s), c))
      prob = episode_probabilities(predictor, normalized(query), support_prompt(support, support_label == 1))
      side = max(label.shape)
      truth = np.full((side, side), IGNORE, np.uint8)
      truth[: label.shape[0], : label.shape[1]] = label
      prob = preprocess.resize_map(prob, side, side, align_corners=True)
      acc.add(confusion_counts(prob, truth)[None], [c])
      if len(examples) < N_EXAMPLES:
        examples.append((records.image(q), prob[: label.shape[0], : label.shape[1]], label, f"class {c} (fold {fold})"))
    per_fold[fold] = (acc, n)
  return _finish(per_fold, opts), examples


def coco20i(predictor, opts):
  """COCO-20i one-shot as COCOWrapper + score.py (module docstring): `opts.episodes` per fold (hsnet: 1000)."""
  from clipseg_jax.input_pipeline.classes import coco20i_fold

  records = SemanticRecords(opts.dataset or "coco", opts.split or "validation", opts.data_dir)
  images_of = {}
  for i, classes in enumerate(records.classes):
    for c in classes:
      images_of.setdefault(c, []).append(i)
  per_fold, examples = {}, []
  for fold in _folds(opts):
    rng = np.random.RandomState(opts.seed)
    episodes = hsnet_episodes(images_of, coco20i_fold(fold), opts.episodes, rng)
    acc, n = Accumulator(), limit(len(episodes), opts)
    for e in progress(range(n), n, f"coco20i fold {fold}", opts):
      if not mine(e):
        continue
      q, c, s = episodes[e]
      query_image, truth = coco_view(records.image(q), records.segmentation(q), c)
      support_image, support_mask = coco_view(records.image(s), records.segmentation(s), c)
      prob = episode_probabilities(
        predictor, preprocess.normalize(query_image), support_prompt(support_image, support_mask.astype(bool))
      )
      acc.add(confusion_counts(prob, truth)[None], [c])
      if len(examples) < N_EXAMPLES:
        examples.append((query_image, prob, truth, f"class {c} (fold {fold})"))
    per_fold[fold] = (acc, n)
  return _finish(per_fold, opts), examples


def coco_view(image: np.ndarray, seg: np.ndarray, c: int, size: int = CANVAS) -> tuple[np.ndarray, np.ndarray]:
  """hsnet's view of an image for class c: (uint8 [size, size, 3] by PIL bilinear, as torchvision's Resize on
  a PIL image; uint8 0/1 [size, size] mask of label == c by torch nearest)."""
  pixels = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
  return pixels, prompts.resize_nearest((seg == c).astype(np.uint8), size)
