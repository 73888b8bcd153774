"""Pictures of prompt algebra, label maps and instances/clean masks on the synthetic scenes, segmented by the
embedded model (offline, CPU, about a minute): three PNGs in experiments/figures/ and the timings measured.

  python experiments/scripts/features_figure.py [--out experiments/figures] [--checkpoint embedded:synthetic]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from clipseg_jax import instances, labelmap, load_model, visualize
from clipseg_jax.input_pipeline import synthetic

# (scene index in the stream seeded 0, expressions); scene 0: a large blue star, a small green triangle, a
# small green star, a large yellow square; scene 2: a small green triangle, a large red square, a small green
# square, a small blue square; scene 5: a large blue square, a small yellow circle, a large blue circle, a small
# purple triangle.
ALGEBRA = [
  (0, ['"the star"', '"blue star"', '"the star" - "blue star"', '"blue star" | "green triangle"']),
  (2, ['"the square"', '"red square"', '"the square" - "red square"', '"the square" & "the green object"']),
]
LABEL_MAPS = [
  (0, ["blue star", "green triangle", "green star", "yellow square"]),
  (2, ["green triangle", "red square", "green square", "blue square"]),
  (5, ["blue square", "yellow circle", "blue circle", "purple triangle"]),
]
INSTANCES = [(0, "the star"), (2, "the square")]
CLEAN = dict(min_area=40, fill_holes=True, dilate=2)
FEATHER = 3.0
HEIGHT = 200


def scene(index: int) -> np.ndarray:
  return synthetic.scene_examples(0, index)[0][0]["image"]


def stack(rows: list[Image.Image]) -> Image.Image:
  out = Image.new("RGB", (max(r.width for r in rows), sum(r.height + 4 for r in rows)), (255, 255, 255))
  y = 0
  for r in rows:
    out.paste(r, (0, y))
    y += r.height + 4
  return out


def tiles(items: list[tuple[str, Image.Image]], height: int = HEIGHT) -> Image.Image:
  """Captioned tiles side by side."""
  width = height
  grid = Image.new("RGB", (len(items) * (width + 4), height + 18), (255, 255, 255))
  draw = ImageDraw.Draw(grid)
  for k, (caption, tile) in enumerate(items):
    grid.paste(tile.convert("RGB").resize((width, height), Image.BILINEAR), (k * (width + 4), 0))
    draw.text((k * (width + 4) + 2, height + 3), caption[:38], fill=(0, 0, 0))
  return grid


def algebra_figure(model) -> tuple[Image.Image, float]:
  rows, seconds = [], []
  for index, exprs in ALGEBRA:
    image = scene(index)
    model.predict_expressions(image, exprs)  # compile
    start = time.perf_counter()
    probs = model.predict_expressions(image, exprs)[0]
    seconds.append(time.perf_counter() - start)
    maps = [(e, visualize.mask_image(p)) for e, p in zip(exprs, probs)]  # grey: the numbers combined, unblended
    rows.append(tiles([("image", Image.fromarray(image)), *maps]))
  return stack(rows), float(np.median(seconds))


def labelmap_figure(model) -> tuple[Image.Image, float]:
  rows, seconds = [], []
  for index, prompts in LABEL_MAPS:
    image = scene(index)
    model.predict_label_map(image, prompts)
    start = time.perf_counter()
    labels = model.predict_label_map(image, prompts, thresholds=0.5)[0]
    seconds.append(time.perf_counter() - start)
    colored = Image.fromarray(labelmap.palette(len(prompts))[labels])
    overlay = labelmap.label_overlay(image, labels, prompts)
    rows.append(tiles([("image", Image.fromarray(image)), ("label map (palette PNG)", colored), ("legend", overlay)]))
  return stack(rows), float(np.median(seconds))


def boxes(image: np.ndarray, found) -> Image.Image:
  colors = labelmap.palette(len(found))[1:]
  layers = np.stack([i.mask for i in found]).astype(np.float32) if found else np.zeros((0, *image.shape[:2]))
  picture = visualize.overlay(image, layers, colors=colors)
  draw = ImageDraw.Draw(picture)
  for i, (inst, color) in enumerate(zip(found, colors)):
    x0, y0, x1, y1 = inst.box
    draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=tuple(int(c) for c in color), width=2)
    draw.text(
      (x0 + 2, y0 + 1), f"{i + 1}: {inst.score:.2f}", fill=(255, 255, 255), stroke_width=1, stroke_fill=(0, 0, 0)
    )
  return picture


def instances_figure(model) -> tuple[Image.Image, float]:
  rows, seconds = [], []
  for index, prompt in INSTANCES:
    image = scene(index)
    prob = model.predict(image, [prompt])[0, 0]
    instances.instances(prob, 0.5, **CLEAN)  # compile
    start = time.perf_counter()
    found = instances.instances(prob, 0.5, **CLEAN)
    seconds.append(time.perf_counter() - start)
    clean = instances.clean_mask(prob, 0.5, **CLEAN)
    soft = instances.clean_mask(prob, 0.5, **CLEAN, feather=FEATHER)
    rows.append(
      tiles(
        [
          (f"{prompt!r}: probability", visualize.mask_image(prob)),
          ("> 0.5", visualize.mask_image(prob > 0.5)),
          ("min_area 40, holes, dilate 2", visualize.mask_image(clean)),
          (f"+ feather {FEATHER:g}", visualize.mask_image(soft)),
          (f"{len(found)} instances: box, score", boxes(image, found)),
        ]
      )
    )
  return stack(rows), float(np.median(seconds))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="experiments/figures")
  parser.add_argument("--checkpoint", default="embedded:synthetic")
  args = parser.parse_args()
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  model = load_model(args.checkpoint)
  timings = {"model_image_size": model.image_size, "scene_size": int(scene(0).shape[0])}
  for name, make in (("algebra", algebra_figure), ("labelmap", labelmap_figure), ("instances", instances_figure)):
    picture, seconds = make(model)
    path = out / f"features_{name}.png"
    picture.save(path)
    timings[f"{name}_seconds"] = round(seconds, 4)
    print(f"wrote {path} ({picture.width}x{picture.height}); median time per image {seconds * 1000:.1f} ms")
  print(json.dumps(timings))


if __name__ == "__main__":
  main()
