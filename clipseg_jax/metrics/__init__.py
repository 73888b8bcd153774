"""The paper's metrics (DESIGN.md section 7): per-threshold confusion counts, IoU_FG, IoU_BIN, mIoU, AP."""

from clipseg_jax.metrics.binary import (FIXED_THRESHOLDS, THRESHOLDS, Accumulator, confusion_counts,
                                        fixed_threshold_metrics, summarize)
from clipseg_jax.metrics.semantic import ConfusionMatrix

__all__ = ["FIXED_THRESHOLDS", "THRESHOLDS", "Accumulator", "ConfusionMatrix", "confusion_counts",
           "fixed_threshold_metrics", "summarize"]
