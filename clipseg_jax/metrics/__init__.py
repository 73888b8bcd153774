"""The paper's metrics as the original's `metrics.py` (FixedIntervalMetrics) computes them: per-threshold
confusion counts, IoU_FG, IoU_BIN, mIoU, AP."""

from clipseg_jax.metrics.binary import (
  FIXED_THRESHOLDS,
  THRESHOLDS,
  Accumulator,
  confusion_counts,
  fixed_threshold_metrics,
  summarize,
  threshold_curves,
)
from clipseg_jax.metrics.semantic import ConfusionMatrix

__all__ = [
  "FIXED_THRESHOLDS",
  "THRESHOLDS",
  "Accumulator",
  "ConfusionMatrix",
  "confusion_counts",
  "fixed_threshold_metrics",
  "summarize",
  "threshold_curves",
]
