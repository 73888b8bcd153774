"""Label maps: N prompts plus background -> one integer label per pixel (0 = background, i = prompt i), palette
PNGs with a legend, and per-prompt thresholds calibrated on a folder of labelled examples.

Rule (`label_map`): prompt i is a candidate at a pixel where its probability exceeds its threshold
(p_i > t_i, strict as `predict(threshold=)`); the pixel takes the candidate with the highest probability (the
lowest index on ties), or background (0) where there is none. With one threshold for all this is "argmax,
background where the largest probability does not exceed the threshold".

Calibration folder layout (`calibrate`):
  DIR/classes.txt        the prompts, one per line: line i (from 1) names label i; expressions allowed
  DIR/images/NAME.EXT    the images (png, jpg, ...)
  DIR/labels/NAME.png    their labels, same NAME: 8-bit (mode L or P) with 0 background, i for prompt i
                         and 255 ignored
"""

from __future__ import annotations

import colorsys
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from clipseg_jax import algebra, preprocess, visualize
from clipseg_jax.preprocess import load_image

DEFAULT_THRESHOLD = 0.5
IGNORE_LABEL = 255
MAX_CLASSES = 254  # labels 1..254 fit a palette PNG beside background (0) and ignore (255)
# Calibration grid: the thresholds tried per prompt (the metrics' 0.02 grid without its extremes is finer
# than a folder of examples can tell apart).
CALIBRATION_GRID = tuple(np.round(np.arange(0.05, 0.951, 0.05), 2).tolist())
BACKGROUND_COLOR = (0, 0, 0)
GOLDEN = 0.618033988749895  # hue step beyond the fixed palette: consecutive classes far apart on the wheel


def as_thresholds(thresholds, n: int) -> np.ndarray:
  """A threshold per prompt from one number or a sequence of n (each in [0, 1])."""
  try:
    t = np.asarray(thresholds, np.float32)
  except (TypeError, ValueError):
    raise ValueError(f"thresholds must be a number or a list of numbers, got {thresholds!r}") from None
  t = np.full(n, t, np.float32) if t.ndim == 0 else t
  if t.shape != (n,):
    raise ValueError(f"need one threshold or {n} (one per prompt), got {np.asarray(thresholds).size}")
  if not np.all((t >= 0) & (t <= 1)):
    raise ValueError(f"thresholds must be in [0, 1], got {t.tolist()}")
  return t


def label_map(probs, thresholds=DEFAULT_THRESHOLD) -> np.ndarray:
  """Probabilities [..., P, H, W] -> uint8 labels [..., H, W] (0 background, i = prompt i) by the module's
  rule; `thresholds`: one for all prompts or one per prompt."""
  probs = np.asarray(probs, np.float32)
  if probs.ndim < 3:
    raise ValueError(f"probabilities must be [..., prompts, H, W], got shape {probs.shape}")
  n = probs.shape[-3]
  if n > MAX_CLASSES:
    raise ValueError(f"at most {MAX_CLASSES} prompts fit a label map, got {n}")
  t = as_thresholds(thresholds, n)
  candidates = np.where(probs > t[:, None, None], probs, -1.0)
  best = candidates.argmax(-3)
  found = np.take_along_axis(candidates, best[..., None, :, :], -3)[..., 0, :, :] >= 0
  return np.where(found, best + 1, 0).astype(np.uint8)


def palette(n: int) -> np.ndarray:
  """[n + 1, 3] uint8 colours: background black, then the overlay palette's colours, then hues spaced by the
  golden ratio; all distinct."""
  colors = [BACKGROUND_COLOR] + [tuple(int(c) for c in rgb) for rgb in visualize.PALETTE[:n]]
  k = 0
  while len(colors) < n + 1:
    rgb = colorsys.hsv_to_rgb((k * GOLDEN) % 1.0, 0.65 + 0.35 * (k % 2), 0.95 - 0.3 * ((k // 2) % 2))
    k += 1
    color = tuple(int(round(255 * c)) for c in rgb)
    if color not in colors:
      colors.append(color)
  return np.array(colors, np.uint8)


def label_image(labels, n_classes: int) -> Image.Image:
  """uint8 labels [H, W] -> a palette ("P") image whose index i shows in class i's colour (`palette`)."""
  labels = np.asarray(labels)
  if labels.ndim != 2:
    raise ValueError(f"labels must be [H, W], got shape {labels.shape}")
  image = Image.fromarray(labels.astype(np.uint8), "P")
  image.putpalette(palette(n_classes).reshape(-1).tolist())
  return image


def legend(names: Sequence[str]) -> list[dict]:
  """[{"label": i, "name": ..., "color": [r, g, b]}] for background (0) and each prompt (1..N)."""
  colors = palette(len(names))
  return [
    {"label": i, "name": name, "color": [int(c) for c in colors[i]]} for i, name in enumerate(["background", *names])
  ]


def save_label_map(path: str | os.PathLike, labels, names: Sequence[str]) -> Path:
  """Write the palette PNG at `path` and its legend (`legend`) as JSON beside it (`STEM_legend.json`)."""
  path = Path(path)
  label_image(labels, len(names)).save(path)
  legend_path = path.with_name(f"{path.stem}_legend.json")
  legend_path.write_text(json.dumps({"legend": legend(names)}, indent=2) + "\n")
  return legend_path


def label_overlay(image, labels, names: Sequence[str]) -> Image.Image:
  """The image with each class painted in its palette colour over it and a legend (background unpainted)."""
  labels = np.asarray(labels)
  colors = palette(len(names))[1:]
  layers = np.stack([labels == i + 1 for i in range(len(names))]).astype(np.float32)
  return visualize.overlay(image, layers, list(names), colors=colors)


def predict_label_maps(model, images, prompts: Sequence, *, thresholds=DEFAULT_THRESHOLD, **options):
  """uint8 label maps [n_images, H, W] (a list when sizes differ) for prompts (or prompt expressions) in one
  vision pass per image; options: `algebra.predict_expressions_iter` (operands=, logic=, templates=, ...)."""
  images = list(images) if isinstance(images, (list, tuple)) else [images]
  t = as_thresholds(thresholds, len(prompts))
  maps = [label_map(out["masks"], t) for out in algebra.predict_expressions_iter(model, images, prompts, **options)]
  if not maps:
    raise ValueError("no images given")
  return np.stack(maps) if len({m.shape for m in maps}) == 1 else maps


def read_thresholds(spec, prompts: Sequence[str]) -> np.ndarray:
  """Per-prompt thresholds from a number ("0.4"), a comma list ("0.4,0.6", one per prompt) or a JSON file
  written by `calibrate` / `clipseg-jax calibrate` (its "thresholds" maps prompts to numbers; prompts it
  does not name keep the default)."""
  spec = str(spec)
  if spec.endswith(".json") or Path(spec).is_file():
    try:
      table = json.loads(Path(spec).read_text())["thresholds"]
      values = [float(table.get(p, DEFAULT_THRESHOLD)) for p in prompts]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
      raise ValueError(f"{spec}: not a thresholds JSON file with a 'thresholds' table of numbers ({e})") from None
    if not any(p in table for p in prompts):
      raise ValueError(f"{spec} has thresholds for {sorted(table)[:5]}, none of the prompts {list(prompts)[:5]}")
    return as_thresholds(values, len(prompts))
  try:
    values = [float(v) for v in spec.split(",")]
  except ValueError:
    raise ValueError(f"thresholds must be a number, a comma list or a .json file, got {spec!r}") from None
  return as_thresholds(values[0] if len(values) == 1 else values, len(prompts))


def read_folder(folder: str | os.PathLike) -> tuple[list[str], list[tuple[Path, Path]]]:
  """(prompts, [(image, label PNG)]) of a calibration folder laid out as the module docstring says."""
  folder = Path(folder)
  classes = folder / "classes.txt"
  if not classes.is_file():
    raise FileNotFoundError(f"{classes} not found: a calibration folder needs classes.txt, images/ and labels/")
  prompts = [line.strip() for line in classes.read_text().splitlines() if line.strip()]
  if not prompts:
    raise ValueError(f"{classes} names no prompts")
  if len(set(prompts)) < len(prompts):
    twice = sorted({p for p in prompts if prompts.count(p) > 1})
    raise ValueError(f"{classes} names a prompt more than once: {twice[:5]} (one line per label)")
  if len(prompts) > MAX_CLASSES:
    raise ValueError(f"{classes}: at most {MAX_CLASSES} prompts, got {len(prompts)}")
  images = sorted(p for p in (folder / "images").glob("*") if p.suffix.lower() in preprocess.IMAGE_SUFFIXES)
  if not images:
    raise FileNotFoundError(f"no images in {folder / 'images'}")
  pairs = []
  for image in images:
    label = folder / "labels" / f"{image.stem}.png"
    if not label.is_file():
      raise FileNotFoundError(f"{label} not found (the label of {image})")
    pairs.append((image, label))
  return prompts, pairs


def read_labels(path: Path, n_classes: int) -> np.ndarray:
  image = Image.open(path)
  if image.mode not in ("L", "P"):
    raise ValueError(f"{path}: labels must be an 8-bit L or P PNG of class indices, got mode {image.mode}")
  labels = np.asarray(image)
  bad = (labels > n_classes) & (labels != IGNORE_LABEL)
  if bad.any():
    raise ValueError(f"{path}: label {int(labels[bad][0])} but classes.txt names only {n_classes} prompts")
  return labels


def _at_label_size(probs: np.ndarray, shape: tuple[int, int], label_path: Path, image: Path) -> np.ndarray:
  """Probabilities of an image `load_image` downscaled (over MAX_SIDE), brought to its labels' full size;
  any other mismatch (another aspect: labels drawn on the image before EXIF rotation?) is refused."""
  (h, w), (ph, pw) = shape, probs.shape[1:]
  scale = max(ph, pw) / max(h, w)
  if scale >= 1 or abs(round(h * scale) - ph) > 1 or abs(round(w * scale) - pw) > 1:
    raise ValueError(
      f"{label_path}: labels are {w}x{h} (WxH) but {image} is {pw}x{ph} as displayed (EXIF orientation "
      "applied): draw the labels on the image as it is displayed"
    )
  return preprocess.resize_map(probs, h, w)


def calibrate(
  model, folder: str | os.PathLike, *, grid: Sequence[float] = CALIBRATION_GRID, progress: bool = True, **options
) -> dict:
  """Per prompt, the threshold of `grid` maximising its mean IoU over the folder's images, where an image's
  IoU for prompt i is |{p_i > t} & {label == i}| / |union| (pixels labelled 255 left out; images where
  both sets are empty do not count; the lowest threshold wins ties). Returns {"thresholds": {prompt: t},
  "miou": {prompt: mean IoU there}, "grid": [...], "images": n}; options: `predict_expressions_iter`."""
  from tqdm import tqdm

  prompts, pairs = read_folder(folder)
  values = sorted(float(g) for g in grid)  # reported as given (0.6, not float32's 0.6000000238)
  grid = np.asarray(values, np.float32)
  if grid.size == 0 or not np.all((grid >= 0) & (grid <= 1)):
    raise ValueError(f"the threshold grid must be non-empty and in [0, 1], got {values}")
  iou_sum = np.zeros((len(prompts), grid.size))
  counted = np.zeros((len(prompts), grid.size))
  images = (load_image(image) for image, _ in pairs)
  outputs = algebra.predict_expressions_iter(model, images, prompts, **options)
  for (image, label_path), out in tqdm(
    zip(pairs, outputs), total=len(pairs), desc="calibrate", unit="image", disable=not progress
  ):
    labels = read_labels(label_path, len(prompts))
    probs = out["masks"]
    if labels.shape != probs.shape[1:]:
      probs = _at_label_size(probs, labels.shape, label_path, image)
    valid = labels != IGNORE_LABEL
    for i, p in enumerate(probs):
      truth = (labels == i + 1)[valid]
      pred = p[valid][None, :] > grid[:, None]  # [grid, pixels]
      inter = (pred & truth).sum(1)
      union = (pred | truth).sum(1)
      iou_sum[i] += np.where(union > 0, inter / np.maximum(union, 1), 0.0)
      counted[i] += union > 0
  miou = np.where(counted > 0, iou_sum / np.maximum(counted, 1), 0.0)
  best = miou.argmax(1)
  return {
    "thresholds": {p: values[b] for p, b in zip(prompts, best)},
    "miou": {p: float(miou[i, b]) for i, (p, b) in enumerate(zip(prompts, best))},
    "grid": values,
    "images": len(pairs),
  }
