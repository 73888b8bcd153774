"""Writes a grid PNG of PhraseCut+ training samples for people to look at.

Each row: the query crop, its target mask over it, the visual support after prompt engineering,
and the prompt text with its text weight w. Builds the dataset first if it is not prepared.

  python experiments/scripts/show_pcplus.py --dataset synthetic --data-dir ~/tensorflow_datasets --out pcplus.png
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from clipseg_jax import visualize
from clipseg_jax.input_pipeline import build, open_source
from clipseg_jax.input_pipeline.pcplus import PairIndex, PCPlusOptions, PCPlusTransform
from clipseg_jax.input_pipeline.sources import tfds_builder

FONT = ImageFont.load_default(size=15)


def grid(samples, size: int) -> Image.Image:
  text_w = 260
  out = Image.new("RGB", (3 * size + text_w, len(samples) * size), (255, 255, 255))
  draw = ImageDraw.Draw(out)
  for row, s in enumerate(samples):
    query = s["pixels"]
    out.paste(Image.fromarray(query), (0, row * size))
    out.paste(visualize.overlay(query, s["mask"]), (size, row * size))
    out.paste(Image.fromarray(s["support"]), (2 * size, row * size))
    label = f"{s['text']}\nw = {float(s['text_weight']):.2f}" + ("  (negative)" if not s["mask"].any() else "")
    draw.multiline_text((3 * size + 8, row * size + 8), label, fill=(0, 0, 0), font=FONT)
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--dataset", default="synthetic/tiny", help="synthetic, synthetic/tiny, phrasecut or folder")
  p.add_argument("--split", default="train")
  p.add_argument("--data-dir", required=True)
  p.add_argument("--out", default="pcplus_samples.png")
  p.add_argument("--n", type=int, default=8)
  p.add_argument("--size", type=int, default=160, help="image size of the samples")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args()
  if args.dataset != "folder" and not tfds_builder(args.dataset, args.data_dir).is_prepared():
    build(args.dataset, data_dir=args.data_dir)
  source = open_source(args.dataset, args.split, data_dir=args.data_dir)
  index = PairIndex(source)
  transform = PCPlusTransform(source, index, PCPlusOptions(image_size=args.size))
  rng = np.random.default_rng(args.seed)
  ids = rng.choice(len(index), min(args.n, len(index)), replace=False)
  grid([transform(int(i), rng) for i in ids], args.size).save(args.out)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
