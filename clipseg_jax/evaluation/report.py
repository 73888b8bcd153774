"""The evaluation report: all numbers as JSON, a Markdown table beside the paper's, a PNG of predictions,
and the IoU-threshold and precision-recall curves as PNGs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from clipseg_jax import visualize
from clipseg_jax.evaluation import plots

# Published numbers (Lüddecke & Ecker 2022, CLIPSeg trained on PC+), percent, at the threshold each
# table uses (the original's Tables.ipynb and experiments/*.yaml `columns`). None: a column the original
# computes that the paper does not print.
PAPER_COLUMNS = {
  "phrasecut": (  # phrasecut.yaml columns: pc_miou_0.3, pc_fgiou_0.3, pc_fgiou_0.5, pc_ap
    ("miou", "0.3", 43.4),
    ("iou_fg", "0.3", 54.7),
    ("miou", "0.5", None),
    ("iou_fg", "0.5", None),
    ("ap", None, 76.7),
  ),
  "pascal5i": (("miou", "0.3", 59.5), ("iou_bin", "0.3", 75.0), ("ap", None, 82.3)),  # mean of 4 folds
  "coco20i": (("miou", "0.1", None), ("iou_bin", "0.1", None), ("ap", None, None)),  # mean of 4 folds
}
# Zero-shot: the paper's unseen-10 / unseen-4 columns are score.py's pas_zs_seen / pas_zs_unseen for the
# models trained with remove_classes [zs, 5] / [zs, 2], which it scores on JoEm's splits 5 and 2
# (`zero_shot.SCORED_SPLIT`), the two keys swapped (`zero_shot` module docstring).
PAPER_ZERO_SHOT = {"unseen-10": {"seen": 35.7, "unseen": 43.1}, "unseen-4": {"seen": None, "unseen": None}}
NOTES = {
  "phrasecut": "CLIPSeg (PC+), t = 0.3; CLIPSeg (PC): 46.1 / 56.2 / 78.2",
  "pascal5i": "CLIPSeg (PC+), t = 0.3, mean of the 4 folds",
  "coco20i": "t = 0.1, mean of the 4 folds",
  "pascal_zeroshot": (
    "CLIPSeg (PC+). The paper's 'unseen-10' and 'unseen-4' name the classes removed from training "
    "(remove_classes [zs, 5] and [zs, 2]); score.py then scores JoEm's unseen-5 (SPNet's pottedplant, sheep, "
    "sofa, train, tvmonitor) and unseen-2 (cow, motorbike) splits, and passes JoEm's Evaluator the seen "
    "and unseen lists swapped: its 'seen' column is the mIoU of the held-out classes"
  ),
}
METRIC_NAMES = {"miou": "mIoU", "iou_fg": "IoU_FG", "iou_bin": "IoU_BIN", "ap": "AP"}


def _pct(x) -> float | None:
  return None if x is None or (isinstance(x, float) and math.isnan(x)) else 100 * float(x)


def paper_columns(task: str, numbers: dict) -> list[dict]:
  """The paper's columns for `task`, ours beside the published value: dicts of `column` (label),
  `metric`, `threshold` (float, None for AP and zero-shot), `ours_pct` (at the paper's threshold),
  `paper_pct`, `best_pct` and `best_threshold` (ours at our best threshold; None where not applicable).
  `numbers`: a protocol's result; binary tasks read `binary_numbers` fields (`value`, `threshold`,
  `fixed` by threshold string) from `numbers["mean"]` (one-shot folds, see `protocols.average_numbers`)
  or `numbers` itself. Empty for tasks without published columns."""
  if task == "pascal_zeroshot":
    return _zero_shot_columns(numbers)
  summary = numbers.get("mean", numbers)
  out = []
  for metric, t, paper in PAPER_COLUMNS.get(task, ()):
    entry = summary.get(metric)
    name = METRIC_NAMES[metric]
    if metric == "ap":
      ours = _pct(entry if not isinstance(entry, dict) else entry.get("value"))
      out.append(
        dict(
          column=name, metric=metric, threshold=None, ours_pct=ours, paper_pct=paper, best_pct=None, best_threshold=None
        )
      )
      continue
    entry = entry if isinstance(entry, dict) else {}
    out.append(
      dict(
        column=f"{name} (t={t})",
        metric=metric,
        threshold=float(t),
        ours_pct=_pct(entry.get("fixed", {}).get(t)),
        paper_pct=paper,
        best_pct=_pct(entry.get("value")),
        best_threshold=entry.get("threshold"),
      )
    )
  return out


def _zero_shot_columns(numbers: dict) -> list[dict]:
  from clipseg_jax.evaluation.zero_shot import SCORED_SPLIT

  out = []
  for column, split in SCORED_SPLIT.items():
    scored = numbers.get(f"unseen-{split}", {}).get("score_py", {})
    for key, label in (("seen", "mIoU_S"), ("unseen", "mIoU_U")):
      out.append(
        dict(
          column=f"{column} {label} (score.py: JoEm unseen-{split}, pas_zs_{key})",
          metric=f"pas_zs_{key}",
          threshold=None,
          ours_pct=_pct(scored.get(key)),
          paper_pct=PAPER_ZERO_SHOT[column][key],
          best_pct=None,
          best_threshold=None,
        )
      )
  return out


def rows(task: str, numbers: dict) -> list[tuple[str, float | None, float | None]]:
  """(metric, ours %, paper %) rows at our best (or the user's fixed) threshold: the metrics the paper's
  columns do not cover; see `paper_columns` for those."""
  if task == "pascal_zeroshot":
    return []
  summary = numbers.get("mean", numbers)
  covered = {metric for metric, _, _ in PAPER_COLUMNS.get(task, ())}
  out = []
  for key, label in METRIC_NAMES.items():
    if key in summary and key not in covered:
      value = summary[key]["value"] if isinstance(summary[key], dict) else summary[key]
      t = summary[key].get("threshold") if isinstance(summary[key], dict) else None
      if t is not None:
        label += f" (t={t:.2f})"
      elif isinstance(summary[key], dict):
        label += " (each fold's best t)"
      out.append((label, _pct(value), None))
  return out


def _fmt(x) -> str:
  return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1f}"


def markdown(task: str, numbers: dict) -> str:
  lines = [f"### {task}", ""]
  columns = paper_columns(task, numbers)
  if columns and task == "pascal_zeroshot":
    lines += ["Paper columns:", "", "| column | clipseg-jax | paper |", "| --- | ---: | ---: |"]
    lines += [f"| {c['column']} | {_fmt(c['ours_pct'])} | {_fmt(c['paper_pct'])} |" for c in columns]
    lines += ["", *zero_shot_table(numbers)]
  elif columns:
    lines += [
      "Paper columns at the paper's threshold, beside ours at our best threshold (or at --threshold):",
      "",
      "| metric | clipseg-jax at the paper's t | paper | clipseg-jax at best t |",
      "| --- | ---: | ---: | ---: |",
    ]
    for c in columns:
      best = "–" if c["best_pct"] is None else _fmt(c["best_pct"])
      if c["best_pct"] is not None:
        best += " (each fold's best t)" if c["best_threshold"] is None else f" (t={c['best_threshold']:.2f})"
      lines.append(f"| {c['column']} | {_fmt(c['ours_pct'])} | {_fmt(c['paper_pct'])} | {best} |")
  other = rows(task, numbers)
  if other:
    lines += ([""] if columns else []) + ["| metric | clipseg-jax |", "| --- | ---: |"]
    lines += [f"| {name} | {_fmt(ours)} |" for name, ours, _ in other]
  if task in NOTES:
    lines += ["", f"Paper: {NOTES[task]}."]
  if "per_class_iou" in numbers:
    lines += ["", *per_class_table(numbers)]
  return "\n".join(lines)


def zero_shot_table(numbers: dict) -> list[str]:
  """Every unseen-n split both ways: mIoU of the seen (background included) and unseen classes, and the
  same two numbers under the keys score.py reports (swapped)."""
  lines = [
    "| split | mIoU seen | mIoU unseen | harmonic | score.py pas_zs_seen | score.py pas_zs_unseen |",
    "| --- | ---: | ---: | ---: | ---: | ---: |",
  ]
  for split, v in numbers.items():
    if split.startswith("unseen-") and isinstance(v, dict):
      s = v["score_py"]
      values = (v["miou_seen"], v["miou_unseen"], v["harmonic"], s["seen"], s["unseen"])
      lines.append(f"| {split} | " + " | ".join(_fmt(_pct(x)) for x in values) + " |")
  lines += [
    "",
    "mIoU seen: background and the classes outside the split; unseen: the split's held-out classes "
    "(JoEm's means: a class absent from truth and prediction counts 0).",
  ]
  return lines


def per_class_table(numbers: dict) -> list[str]:
  """Zero-shot: each class's IoU (%) and the unseen-n splits that hold it out."""
  held_out = {}
  for split, v in numbers.items():
    for c in v.get("unseen_classes", ()) if isinstance(v, dict) else ():
      held_out.setdefault(c, []).append(split)
  lines = ["| class | IoU | unseen in |", "| --- | ---: | --- |"]
  for c, iou in numbers["per_class_iou"].items():
    lines.append(f"| {c} | {'–' if iou is None else f'{100 * iou:.1f}'} | {', '.join(held_out.get(c, [])) or '–'} |")
  return lines


def picture(examples, size: int = 160) -> Image.Image:
  """Rows of (image, prediction over it, ground truth over it) with the prompt written under."""
  if not examples:
    return Image.new("RGB", (3 * size, 20), "white")
  out = Image.new("RGB", (3 * size, len(examples) * (size + 16)), "white")
  draw = ImageDraw.Draw(out)
  for row, (image, pred, truth, label) in enumerate(examples):
    y = row * (size + 16)
    im = Image.fromarray(image).resize((size, size))
    small = lambda m: np.asarray(Image.fromarray(np.asarray(m, np.float32)).resize((size, size)), np.float32)
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.dtype.kind in "iu" and pred.max(initial=0) > 1:  # class maps: show the class boundaries
      pred, truth = (pred > 0).astype(np.float32), ((truth > 0) & (truth != 255)).astype(np.float32)
    truth = np.where(np.asarray(truth) == 255, 0, truth)
    out.paste(im, (0, y))
    out.paste(visualize.overlay(im, small(pred)), (size, y))
    out.paste(visualize.overlay(im, small(truth)), (2 * size, y))
    draw.text(
      (4, y + size + 1), f"{label}   [image | prediction | truth]", fill=(0, 0, 0), font=ImageFont.load_default(size=12)
    )
  return out


def write(out_dir, task: str, numbers: dict, examples, meta: dict) -> str:
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  record = {"task": task, **meta, "results": numbers, "paper_columns": paper_columns(task, numbers)}
  (out / f"{task}.json").write_text(json.dumps(record, indent=2, default=_json) + "\n")
  picture(examples).save(out / f"{task}_predictions.png")
  plots.write(out, task, numbers)
  table = markdown(task, numbers)
  (out / f"{task}.md").write_text(table + "\n")
  return table


def _json(x):
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  raise TypeError(type(x))
