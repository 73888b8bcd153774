"""Binary segmentation metrics over 49 fixed thresholds, as the paper reports them.

`confusion_counts` is a pure array function (numpy or jax.numpy, jit- and shard-friendly) giving
per-sample tp/fp/fn/tn at every threshold; `Accumulator` sums them over batches, per class, and
across hosts; `summarize` turns sums into IoU_FG, IoU_BIN, mIoU and AP (as the original's metrics.py):

  IoU_FG  = tp / (1 + tp + fp + fn)                      (sums over the set)
  IoU_BIN = (IoU_FG + tn / (1 + tn + fn + fp)) / 2
  mIoU    = mean over classes of each class's cumulative IoU_FG
  AP      = Simpson's rule over (recall, precision) with precision = tp / (1 + tp + fp),
            recall = tp / (1 + tp + fn), at thresholds where tp + fp > 0; pairs deduplicated by a set
            and sorted by recall alone (tied recalls keep the set's order), integrated as SciPy's
            `simps` did before 1.11 (even='avg' for an even number of points).
A pixel is positive where p > t (strict); label 255 is ignored. Predictions at another size than
their target are resized bilinearly with align_corners=True (the original's resize_pred=True).
"""

from __future__ import annotations

import numpy as np

from clipseg_jax.preprocess import resize_map

# float32 so that numpy and JAX compare the same numbers.
THRESHOLDS = np.linspace(0, 1, 51)[1:-1].astype(np.float32)
FIXED_THRESHOLDS = (0.1, 0.2, 0.3, 0.5)
IGNORE_LABEL = 255
TP, FP, FN, TN = range(4)


def confusion_counts(probs, targets, *, ignore_label: int = IGNORE_LABEL, xp=np):
  """probs [..., H, W] in [0, 1], targets [..., H, W] (0/1, `ignore_label`) -> int32 [..., T, 4]
  counts (tp, fp, fn, tn) at each of the T thresholds. `xp` is numpy or jax.numpy."""
  t = xp.asarray(THRESHOLDS)
  pred = probs[..., None] > t  # [..., H, W, T]
  valid = (targets != ignore_label)[..., None]
  fg = (targets == 1)[..., None]
  count = lambda m: xp.sum(m, axis=(-3, -2), dtype=xp.int32)
  tp = count(pred & fg & valid)
  fp = count(pred & ~fg & valid)
  fn = count(~pred & fg & valid)
  tn = count(~pred & ~fg & valid)
  return xp.stack([tp, fp, fn, tn], axis=-1)


class Accumulator:
  """Sums of per-threshold counts over the whole set and per class (host-side, int64)."""

  def __init__(self):
    self.total = np.zeros((len(THRESHOLDS), 4), np.int64)
    self.per_class: dict = {}

  def add(self, counts, classes=None):
    """counts [B, T, 4] (or [T, 4]); classes: one hashable class id per sample (None: own class)."""
    counts = np.asarray(counts, np.int64).reshape(-1, len(THRESHOLDS), 4)
    if classes is None:
      start = len(self.per_class)
      classes = [("sample", start + i) for i in range(len(counts))]
    classes = list(classes)
    if len(classes) != len(counts):
      raise ValueError(f"{len(classes)} class ids for {len(counts)} samples")
    self.total += counts.sum(0)
    for c, k in zip(classes, counts):
      c = c.item() if hasattr(c, "item") else c
      self.per_class[c] = self.per_class.get(c, 0) + k
    return self

  def merge(self, other: Accumulator):
    self.total += other.total
    for c, k in other.per_class.items():
      self.per_class[c] = self.per_class.get(c, 0) + k
    return self

  def allreduce(self):
    """Sum over all processes of a multi-host run (every process gets the same result)."""
    import jax

    if jax.process_count() == 1:
      return self
    import pickle

    from jax.experimental import multihost_utils

    blob = np.frombuffer(pickle.dumps(self), np.uint8)
    size = multihost_utils.process_allgather(np.array([blob.size]))
    padded = np.zeros(int(size.max()), np.uint8)
    padded[: blob.size] = blob
    blobs = multihost_utils.process_allgather(padded)
    merged = Accumulator()
    for n, b in zip(np.ravel(size), blobs):
      merged.merge(pickle.loads(b[: int(n)].tobytes()))
    return merged

  def result(self) -> dict:
    return summarize(self.total, np.stack(list(self.per_class.values())) if self.per_class else None)


def _iou(tp, fp, fn):
  return tp / (1.0 + tp + fp + fn)


def _simpson_panels(y, x, start: int, stop: int) -> float:
  """Composite Simpson on irregular spacing over points start..stop (stop - start even), with the
  guards SciPy's `_basic_simps` had for zero-width intervals (a ratio with a zero denominator is 0)."""
  y, h = y[start : stop + 1], np.diff(x[start : stop + 1])
  if len(h) < 2:
    return 0.0
  h0, h1 = h[0::2], h[1::2]
  y0, y1, y2 = y[0:-1:2], y[1::2], y[2::2]
  hsum, hprod = h0 + h1, h0 * h1
  safe = lambda a, b: np.divide(a, b, out=np.zeros_like(a), where=b != 0)
  ratio = safe(h0, h1)
  w0 = 2.0 - safe(np.ones_like(ratio), ratio)
  w1 = hsum * safe(hsum, hprod)
  w2 = 2.0 - ratio
  return float(np.sum(hsum / 6.0 * (y0 * w0 + y1 * w1 + y2 * w2)))


def simps_avg(y, x) -> float:
  """SciPy's `simps(y, x)` before 1.11 (even='avg'): composite Simpson for an odd number of points;
  for an even number, the mean of (Simpson on the first N-1 points + trapezoid on the last interval)
  and (trapezoid on the first interval + Simpson on the last N-1 points). 0 for fewer than 2 points."""
  y, x = np.asarray(y, np.float64), np.asarray(x, np.float64)
  n = len(y)
  if n % 2:
    return _simpson_panels(y, x, 0, n - 1)
  last = 0.5 * (x[-1] - x[-2]) * (y[-1] + y[-2])
  first = 0.5 * (x[1] - x[0]) * (y[1] + y[0])
  simpson = _simpson_panels(y, x, 0, n - 2) + _simpson_panels(y, x, 1, n - 1)
  return float(simpson / 2.0 + (last + first) / 2.0)


def precision_recall(tp, fp, fn) -> tuple[np.ndarray, np.ndarray]:
  """The original's smoothed precision tp / (1 + tp + fp) and recall tp / (1 + tp + fn) per threshold."""
  tp, fp, fn = (np.asarray(a, np.float64) for a in (tp, fp, fn))
  return tp / (1.0 + tp + fp), tp / (1.0 + tp + fn)


def average_precision(tp, fp, fn) -> float:
  """The original's AP: `precision_recall` at the thresholds with tp + fp > 0, (recall, precision)
  pairs deduplicated by a Python set and sorted by recall alone (stable: tied recalls keep the set's
  iteration order, deterministic for floats under any PYTHONHASHSEED), then
  `simps_avg(precision, recall)`. 0 when no threshold predicts anything."""
  keep = (np.asarray(tp) + np.asarray(fp)) > 0
  precision, recall = (a[keep] for a in precision_recall(tp, fp, fn))
  pairs = sorted(set(zip(recall.tolist(), precision.tolist())), key=lambda rp: rp[0])
  if len(pairs) < 2:
    return 0.0
  r, p = np.array(pairs).T
  return simps_avg(p, r)


def summarize(total, per_class=None) -> dict:
  """Sums [T, 4] (+ per-class [C, T, 4]) -> metric curves over thresholds (with the precision and
  recall curves) and the AP."""
  total = np.asarray(total, np.float64)
  tp, fp, fn, tn = total.T
  iou_fg = _iou(tp, fp, fn)
  iou_bin = (iou_fg + tn / (1.0 + tn + fn + fp)) / 2
  if per_class is not None:
    pc = np.asarray(per_class, np.float64)
    miou = _iou(pc[..., TP], pc[..., FP], pc[..., FN]).mean(0)
  else:
    miou = iou_fg
  precision, recall = precision_recall(tp, fp, fn)
  return {
    "thresholds": THRESHOLDS.astype(np.float64),
    "iou_fg": iou_fg,
    "iou_bin": iou_bin,
    "miou": miou,
    "precision": precision,
    "recall": recall,
    "ap": average_precision(tp, fp, fn),
  }


def at_threshold(result: dict, name: str, t: float | None = None) -> tuple[float, float]:
  """(threshold, value) of curve `name` at the threshold nearest `t`, or at its best threshold."""
  curve = result[name]
  i = int(np.argmax(curve)) if t is None else int(np.argmin(np.abs(result["thresholds"] - t)))
  return float(result["thresholds"][i]), float(curve[i])


def threshold_curves(probs, targets, classes=None, *, ignore_label: int = IGNORE_LABEL) -> dict:
  """The paper's metrics at each of the 49 thresholds, over a set of samples of any sizes (the
  original's `FixedIntervalMetrics`: a fixed interval of thresholds, not one fixed threshold).

  probs: float maps in [0, 1] (H_i x W_i), resized bilinearly (align_corners=True, as the original's
  resize_pred=True) to their target's size when the sizes differ; targets: uint8 maps (0/1,
  `ignore_label` ignored); classes: a class id per sample (default: each sample its own class).
  Returns numpy curves over the 49 thresholds (`thresholds`, `iou_fg`, `iou_bin`, `miou`) and the
  float `ap`.
  """
  probs, targets = list(probs), list(targets)
  if len(probs) != len(targets):
    raise ValueError(f"{len(probs)} predictions for {len(targets)} targets")
  acc = Accumulator()
  for i, (p, t) in enumerate(zip(probs, targets)):
    t = np.asarray(t)
    if t.ndim != 2:
      raise ValueError(f"target {i} must be H x W, got shape {t.shape}")
    p = resize_map(np.asarray(p, np.float32), *t.shape, align_corners=True)
    acc.add(confusion_counts(p, t, ignore_label=ignore_label)[None], None if classes is None else [classes[i]])
  return acc.result()


# The name the public contract gives it (after the original's FixedIntervalMetrics).
fixed_threshold_metrics = threshold_curves
