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

# Published numbers (Lüddecke & Ecker 2022), percent. CLIPSeg trained on PC+ unless noted.
PAPER = {
  "phrasecut": {"miou": 43.4, "iou_fg": 54.7, "ap": 76.7, "_note": "CLIPSeg (PC+), t=0.3; PC: 46.1 / 56.2 / 78.2"},
  "pascal5i": {"miou": 59.5, "iou_bin": 75.0, "ap": 82.3, "_note": "CLIPSeg (PC+), mean of 4 folds"},
  "pascal_zeroshot": {"unseen-10": {"miou_seen": 35.7, "miou_unseen": 43.1}, "_note": "CLIPSeg (PC+)"},
}


def rows(task: str, numbers: dict) -> list[tuple[str, float | None, float | None]]:
  """(metric, ours %, paper %) rows for the Markdown table."""
  paper = PAPER.get(task, {})
  out = []
  if task == "pascal_zeroshot":
    for split, v in numbers.items():
      if split.startswith("unseen-"):
        ref = paper.get(split, {})
        out += [
          (f"{split} mIoU seen", 100 * v["miou_seen"], ref.get("miou_seen")),
          (f"{split} mIoU unseen", 100 * v["miou_unseen"], ref.get("miou_unseen")),
        ]
    return out
  summary = numbers.get("mean", numbers)
  for key, label in (("miou", "mIoU"), ("iou_fg", "IoU_FG"), ("iou_bin", "IoU_BIN"), ("ap", "AP")):
    if key in summary:
      value = summary[key]["value"] if isinstance(summary[key], dict) else summary[key]
      t = summary[key].get("threshold") if isinstance(summary[key], dict) else None
      out.append((label + (f" (t={t:.2f})" if t is not None else ""), 100 * value, paper.get(key)))
  return out


def markdown(task: str, numbers: dict) -> str:
  lines = [f"### {task}", "", "| metric | clipseg-jax | paper |", "| --- | ---: | ---: |"]
  for name, ours, ref in rows(task, numbers):
    fmt = lambda x: "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1f}"
    lines.append(f"| {name} | {fmt(ours)} | {fmt(ref)} |")
  if "_note" in PAPER.get(task, {}):
    lines += ["", f"Paper: {PAPER[task]['_note']}."]
  if "per_class_iou" in numbers:
    lines += ["", *per_class_table(numbers)]
  return "\n".join(lines)


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
  (out / f"{task}.json").write_text(
    json.dumps({"task": task, **meta, "results": numbers}, indent=2, default=_json) + "\n"
  )
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
