"""Multi-class confusion matrix for the zero-shot protocol (argmax over 21 prompts)."""

from __future__ import annotations

import numpy as np


class ConfusionMatrix:
  """Accumulates [num_classes, num_classes] counts (rows: truth, columns: prediction)."""

  def __init__(self, num_classes: int, ignore_label: int = 255):
    self.n, self.ignore = num_classes, ignore_label
    self.matrix = np.zeros((num_classes, num_classes), np.int64)

  def add(self, prediction: np.ndarray, truth: np.ndarray):
    prediction, truth = np.asarray(prediction).ravel(), np.asarray(truth).ravel()
    keep = truth != self.ignore
    idx = truth[keep].astype(np.int64) * self.n + prediction[keep].astype(np.int64)
    self.matrix += np.bincount(idx, minlength=self.n * self.n).reshape(self.n, self.n)
    return self

  def allreduce(self):
    """Sum over all processes of a multi-host run (every process gets the same matrix)."""
    import jax

    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      self.matrix = np.asarray(multihost_utils.process_allgather(self.matrix)).sum(0)
    return self

  def iou(self) -> np.ndarray:
    """Per-class IoU = TP / (TP + FP + FN); NaN for classes absent from truth and prediction."""
    tp = np.diag(self.matrix).astype(np.float64)
    denom = self.matrix.sum(0) + self.matrix.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
      return np.where(denom > 0, tp / denom, np.nan)

  def mean_iou(self, classes) -> float:
    values = self.iou()[list(classes)]
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
