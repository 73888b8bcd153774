"""PASCAL VOC zero-shot segmentation as the original runs it (timojl/clipseg `score.py`, test_dataset
`pascal_zs`; `datasets/pascal_zeroshot.py`; `models/clipseg.py` CLIPSegMultiLabel; JoEm's `Evaluator`).

Per val image: JoEm normalises the full-size image (float32 /255, ImageNet mean/std), torchvision's
`Resize((S, S))` squashes the normalised tensor (bilinear, align_corners=False, no antialias), the label
goes to S x S by nearest. The model runs once per class name of JoEm's list (raw names, no template);
each class scores -10 + sigmoid(logits) (x3 for background) in float32; the argmax at S x S is scored
against the resized label with JoEm's confusion matrix (labels outside 0-20 ignored). JoEm's mean IoU
counts a class absent from truth and prediction as 0 (`np.nan_to_num`).

The original builds `Evaluator(21, get_unseen_idx(n), get_seen_idx(n))`, but the signature is
`(num_class, seen_classes_idx, unseen_classes_idx)`: its reported 'seen' is the mean over the held-out
classes and its 'unseen' the mean over the others. Each split is reported both ways here:
`miou_seen`/`miou_unseen` by their meaning, and `score_py` = the keys as score.py returns them.
"""

from __future__ import annotations

import numpy as np

from clipseg_jax import preprocess
from clipseg_jax.evaluation.common import N_EXAMPLES, limit, mine, nan_to_none, progress
from clipseg_jax.metrics import ConfusionMatrix
from clipseg_jax.prompts import resize_nearest

SCORE_OFFSET = np.float32(-10.0)  # CLIPSegMultiLabel's initial score; adding to it rounds to float32 steps
# The original trains "unseen-10" with remove_classes [zs, 5] and "unseen-4" with [zs, 2] (5 and 2 pairs of
# PASCAL_VOC_CLASSES_ZS) and scores both with JoEm's get_unseen_idx(remove_classes[1]): splits 5 and 2.
SCORED_SPLIT = {"unseen-10": 5, "unseen-4": 2}


def original_pixels(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 HxWx3 -> float32 [size, size, 3] as the original's zero-shot input: ImageNet-normalised at
  full size (JoEm's `Normalize`), then torch's bilinear resize, align_corners=False, no antialias
  (torchvision's `Resize` on a tensor, whose antialias was off by default then)."""
  x = preprocess.normalize(np.asarray(image))
  rows = preprocess.bilinear_matrix(x.shape[0], size).astype(np.float32)
  cols = preprocess.bilinear_matrix(x.shape[1], size).astype(np.float32)
  tall = (rows @ x.reshape(x.shape[0], -1)).reshape(size, x.shape[1], x.shape[2])  # [size, W, 3]
  return np.matmul(cols, tall)  # [size, size, 3]: two float32 matmuls


def class_scores(probs: np.ndarray, background_scale: float) -> np.ndarray:
  """[21, S, S] probabilities -> CLIPSegMultiLabel's scores: -10 + p, background's p scaled, in float32
  (the rounding there decides ties, which the argmax then gives to the lower label)."""
  scale = np.ones((probs.shape[0], 1, 1), np.float32)
  scale[0] = background_scale
  return SCORE_OFFSET + np.asarray(probs, np.float32) * scale


def joem_mean_iou(iou: np.ndarray, classes) -> float:
  """JoEm's mean over `classes` of per-class IoUs, NaN (class absent everywhere) counted as 0."""
  return float(np.mean(np.nan_to_num(np.asarray(iou, np.float64)[list(classes)])))


def _harmonic(a: float, b: float) -> float:
  return 2 * a * b / (a + b) if a + b > 0 else float("nan")


def split_numbers(iou: np.ndarray, n: int) -> dict:
  """mIoU of one unseen-n split from the per-class IoUs: by meaning, and as score.py reports it."""
  from clipseg_jax.input_pipeline.classes import joem_class_names, joem_seen_idx, joem_unseen_idx

  seen, unseen = joem_mean_iou(iou, joem_seen_idx(n)), joem_mean_iou(iou, joem_unseen_idx(n))
  return {
    "miou_seen": seen,  # background + the classes outside the split
    "miou_unseen": unseen,  # the split's held-out classes
    "harmonic": _harmonic(seen, unseen),
    "unseen_classes": [voc_name(joem_class_names()[c]) for c in joem_unseen_idx(n)],
    # score.py's pas_zs_seen / pas_zs_unseen (its Evaluator receives the index lists swapped)
    "score_py": {"seen": unseen, "unseen": seen, "harmonic": _harmonic(seen, unseen)},
  }


def voc_name(joem_name: str) -> str:
  """JoEm's class name as VOC's own list spells it (JoEm writes 'airplane' for VOC's 'aeroplane')."""
  from clipseg_jax.input_pipeline.classes import joem_class_names, pascal_classes

  names = joem_class_names()
  return (["background"] + pascal_classes())[names.index(joem_name)]


def pascal_zeroshot(model, opts):
  """The protocol: `model` has `text(prompts)` and `zero_shot_probabilities(image, cond)` ([P, S, S] at
  the model's size, from `original_pixels`). Returns (numbers, examples)."""
  from clipseg_jax.input_pipeline.classes import joem_class_names, joem_unseen_idx, pascal_classes
  from clipseg_jax.input_pipeline.sources import prepared_source

  for k in opts.unseen:
    joem_unseen_idx(k)  # an unknown split fails here, before any compute
  source = prepared_source(opts.dataset or "pascal_voc", opts.split or "val", opts.data_dir)
  names = joem_class_names()
  cond = model.text(names)
  cm, examples = ConfusionMatrix(len(names)), []
  n = limit(len(source), opts)
  for i in progress(range(n), n, "pascal_zeroshot", opts):
    if not mine(i):
      continue
    r = source[i]
    probs = model.zero_shot_probabilities(r["image"], cond)
    pred = class_scores(probs, opts.background_scale).argmax(0)
    truth = resize_nearest(r["segmentation"][..., 0], pred.shape[-1])
    truth = np.where(truth < len(names), truth, 255)  # JoEm counts labels 0-20 only
    cm.add(pred, truth)
    if len(examples) < N_EXAMPLES:
      examples.append((r["image"], pred, truth, "argmax of 21 prompts"))
  cm.allreduce()
  iou = cm.iou()
  numbers = {
    "images": n,
    "prompts": names,
    "background_scale": opts.background_scale,
    "per_class_iou": dict(zip(["background"] + pascal_classes(), nan_to_none(iou))),
    "miou_overall": joem_mean_iou(iou, range(len(names))),
  }
  for k in opts.unseen:
    numbers[f"unseen-{k}"] = split_numbers(iou, k)
  return numbers, examples
