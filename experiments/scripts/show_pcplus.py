"""Writes a grid PNG of PhraseCut+ training samples for people to look at.

Each row: the query crop, its target mask over it, the visual support after prompt engineering,
and the prompt text with its text weight w. Builds the dataset first if it is not prepared.

  python experiments/scripts/show_pcplus.py --dataset synthetic --data-dir ~/tensorflow_datasets --out pcplus.png
  ... --device   # two more columns: the same draws through the device path (input_pipeline/device.py),
                 # query resized and support engineered inside the jitted step
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from clipseg_jax import preprocess, visualize
from clipseg_jax.input_pipeline import build, handoff, open_source
from clipseg_jax.input_pipeline.pcplus import (
  PairIndex,
  PCPlusOptions,
  PCPlusRawTransform,
  PCPlusTransform,
  padded_keys,
  to_uint8,
)
from clipseg_jax.input_pipeline.sources import tfds_builder

FONT = ImageFont.load_default(size=15)


def stack_samples(samples: list[dict], opts) -> dict:
  """Samples batched as the loader does (texts left out): the device path's crops padded."""
  batcher = handoff.Batcher(pad=padded_keys(opts) if opts.device_augment else {})
  return batcher([{k: v for k, v in s.items() if k != "text"} for s in samples])


def shown(support: np.ndarray, size: int) -> Image.Image:
  """A normalised float32 support as the colours it stands for (normalised 0 = the mean colour)."""
  rgb = np.clip((np.asarray(support) * preprocess.STD + preprocess.MEAN) * 255.0 + 0.5, 0, 255).astype(np.uint8)
  return Image.fromarray(rgb).resize((size, size), Image.NEAREST)


def grid(samples, size: int, device=None) -> Image.Image:
  """Rows of query | mask over it | support (host path) [| query | support (device path)] | prompt.
  Query pixels are float 0..255 (the original's unrounded resize): shown rounded."""
  text_w, cols = 260, 3 + 2 * (device is not None)
  out = Image.new("RGB", (cols * size + text_w, len(samples) * size), (255, 255, 255))
  draw = ImageDraw.Draw(out)
  for row, s in enumerate(samples):
    query = to_uint8(s["pixels"])
    out.paste(Image.fromarray(query), (0, row * size))
    out.paste(visualize.overlay(query, s["mask"]), (size, row * size))
    out.paste(shown(s["support"], size), (2 * size, row * size))
    if device is not None:
      out.paste(Image.fromarray(to_uint8(device["pixels"][row])), (3 * size, row * size))
      out.paste(shown(device["support"][row], size), (4 * size, row * size))
    label = f"{s['text']}\nw = {float(s['text_weight']):.2f}" + ("  (negative)" if not s["mask"].any() else "")
    draw.multiline_text((cols * size + 8, row * size + 8), label, fill=(0, 0, 0), font=FONT)
  return out


def device_path(source, index, opts, ids, seed: int) -> dict:
  """The same draws through the raw transform and `device.finish` (jitted): pixels, mask, support."""
  import jax

  from clipseg_jax.input_pipeline import device

  raw = PCPlusRawTransform(source, index, opts)
  samples = [raw(int(i), np.random.default_rng([seed, k])) for k, i in enumerate(ids)]
  batch = stack_samples(samples, dataclasses.replace(opts, device_augment=True))
  out = jax.jit(lambda b: device.finish(b, opts.prompt_mode, opts.image_size))(batch)
  return {k: np.asarray(out[k]) for k in ("pixels", "mask", "support")}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--dataset", default="synthetic/tiny", help="synthetic, synthetic/tiny, phrasecut or folder")
  p.add_argument("--split", default="train")
  p.add_argument("--data-dir", required=True)
  p.add_argument("--out", default="pcplus_samples.png")
  p.add_argument("--n", type=int, default=8)
  p.add_argument("--size", type=int, default=160, help="image size of the samples")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--device", action="store_true", help="add the device path's supports beside the host's")
  args = p.parse_args()
  if args.dataset != "folder" and not tfds_builder(args.dataset, args.data_dir).is_prepared():
    build(args.dataset, data_dir=args.data_dir)
  source = open_source(args.dataset, args.split, data_dir=args.data_dir)
  index = PairIndex(source)
  opts = PCPlusOptions(image_size=args.size)
  transform = PCPlusTransform(source, index, opts)
  ids = np.random.default_rng(args.seed).choice(len(index), min(args.n, len(index)), replace=False)
  samples = [transform(int(i), np.random.default_rng([args.seed, k])) for k, i in enumerate(ids)]
  dev = device_path(source, index, opts, ids, args.seed) if args.device else None
  if dev is not None:
    for key, unit in (("pixels", "0..255"), ("mask", "0/1"), ("support", "normalised units")):
      diff = max(float(np.abs(s[key] - d).max()) for s, d in zip(samples, dev[key]))
      print(f"host and device {key} differ by at most {diff:.1e} ({unit})")
  grid(samples, args.size, dev).save(args.out)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
