"""Where a model trained on the synthetic set fails: foreground IoU on held-out scenes by phrase kind.

Phrases are grouped by their words' roles ("the C object", "the Z S", "the S on the D": C colour,
S shape, Z size, D side); negatives (phrases naming no object) count their false-positive pixels only.
Colour phrases show how well masks are drawn; shape phrases, whether the backbone's patch tokens
tell shapes apart.

  python experiments/scripts/iou_by_phrase.py WORKDIR [--data-dir out/demo/tfds] [--images 100]
"""

from __future__ import annotations

import argparse
import collections
import re

import numpy as np
from tqdm import tqdm

from clipseg_jax import load_model
from clipseg_jax.input_pipeline import open_source
from clipseg_jax.input_pipeline.synthetic import COLORS, SHAPES, SIZES

ROLES = {"C": COLORS, "S": SHAPES, "Z": SIZES, "D": ("left", "right")}


def kind(phrase: str) -> str:
  for role, words in ROLES.items():
    phrase = re.sub(r"\b(" + "|".join(words) + r")\b", role, phrase)
  return phrase


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("model", help="anything load_model takes (a training workdir)")
  p.add_argument("--data-dir", default="out/demo/tfds")
  p.add_argument("--split", default="test")
  p.add_argument("--images", type=int, default=100)
  p.add_argument("--threshold", type=float, default=0.5)
  args = p.parse_args()
  model = load_model(args.model)
  source = open_source("synthetic", args.split, data_dir=args.data_dir)
  inter, union, count = collections.Counter(), collections.Counter(), collections.Counter()
  for i in tqdm(range(min(args.images, len(source))), desc="scoring", unit="img"):
    r = source[i]
    probs = model.predict(r["image"], list(r["phrases"]))[0]
    for phrase, mask, prob in zip(r["phrases"], r["masks"], probs):
      truth, pred = np.asarray(mask, bool).reshape(prob.shape), np.asarray(prob) > args.threshold
      for k in ("all", kind(phrase) if truth.any() else "negative (no object)"):
        inter[k] += int((pred & truth).sum())
        union[k] += int((pred | truth).sum())
        count[k] += 1
  print(f"\n| phrase kind | phrases | IoU_FG @{args.threshold} | false-positive pixels per phrase |")
  print("| --- | ---: | ---: | ---: |")
  for k in sorted(count, key=lambda k: (k != "all", -count[k])):
    print(f"| {k} | {count[k]} | {100 * inter[k] / max(union[k], 1):.1f} | {(union[k] - inter[k]) / count[k]:.0f} |")


if __name__ == "__main__":
  main()
