"""Evaluation pictures (matplotlib): IoU against the threshold, and the precision-recall curve the AP
integrates, for the protocols scored over thresholds (referring and one-shot; one line per fold)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CURVES = (("iou_fg", "IoU_FG"), ("iou_bin", "IoU_BIN"), ("miou", "mIoU"))
STYLES = ("-", "--", ":")
FIGSIZE = (5.5, 4.0)
DPI = 120


def curve_sets(numbers: dict) -> dict[str, dict]:
  """label -> {"curves": ..., "ap": ...}: the result itself, or one per fold of a one-shot result;
  empty for results without threshold curves (zero-shot is scored on the argmax)."""
  if "curves" in numbers:
    return {"": numbers}
  return {k: v for k, v in numbers.items() if isinstance(v, dict) and "curves" in v}


def _figure():
  import matplotlib

  matplotlib.use("Agg")  # files only, whatever the environment's backend
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
  ax.grid(alpha=0.3)
  return plt, fig, ax


def _save(plt, fig, ax, path: Path, title: str):
  ax.set_title(title)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def iou_threshold(sets: dict, path: Path, title: str):
  """IoU_FG, IoU_BIN and mIoU over the 49 thresholds, the best of each marked."""
  plt, fig, ax = _figure()
  for i, (label, numbers) in enumerate(sets.items()):
    c = numbers["curves"]
    t = np.asarray(c["thresholds"])
    for (key, name), style in zip(CURVES, STYLES):
      y = 100 * np.asarray(c[key])
      best = int(np.argmax(y))
      line = ax.plot(t, y, style, color=f"C{i}", label=f"{label} {name} (best {y[best]:.1f} at {t[best]:.2f})".strip())
      ax.plot(t[best], y[best], "o", color=line[0].get_color(), markersize=4)
  ax.set(xlabel="threshold", ylabel="IoU (%)", xlim=(0, 1), ylim=(0, 100))
  _save(plt, fig, ax, path, title)


def precision_recall(sets: dict, path: Path, title: str):
  """Precision over recall at the thresholds that predict anything (the points the AP integrates)."""
  plt, fig, ax = _figure()
  for i, (label, numbers) in enumerate(sets.items()):
    c = numbers["curves"]
    p, r = np.asarray(c["precision"]), np.asarray(c["recall"])
    keep = (p > 0) | (r > 0)
    order = np.argsort(r[keep], kind="stable")
    ax.plot(r[keep][order], p[keep][order], ".-", color=f"C{i}", label=f"{label} AP {100 * numbers['ap']:.1f}".strip())
  ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
  _save(plt, fig, ax, path, title)


def write(out_dir, task: str, numbers: dict) -> list[Path]:
  """`{task}_iou_threshold.png` and `{task}_precision_recall.png` (none for results without curves)."""
  sets = curve_sets(numbers)
  if not sets:
    return []
  out = Path(out_dir)
  paths = [out / f"{task}_iou_threshold.png", out / f"{task}_precision_recall.png"]
  iou_threshold(sets, paths[0], f"{task}: IoU vs threshold")
  precision_recall(sets, paths[1], f"{task}: precision-recall")
  return paths
