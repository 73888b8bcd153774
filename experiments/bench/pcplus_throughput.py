"""Samples/second of the full PhraseCut+ transform per worker process at 352 px.

Each sample decodes two JPEGs (query and support, Visual-Genome-like 500x375), crops, resizes,
engineers the visual prompt (crop_blur_highlight) and tokenizes the templated phrase. Measured in
this process (one worker's work) and through the grain loader with one worker process.
Target: at least 40 samples/s per worker.

  python experiments/bench/pcplus_throughput.py [--n 400]
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
from PIL import Image

from clipseg_jax.input_pipeline.loader import Tokenize, make_loader
from clipseg_jax.input_pipeline.pcplus import PairIndex, PCPlusOptions, PCPlusTransform

TARGET = 40.0


class JpegSource:
  """In-memory referring records stored as JPEG bytes (decoded on access, like a real source)."""

  def __init__(self, n_images=64, size=(375, 500), seed=0):
    rng = np.random.RandomState(seed)
    self.items = []
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]]
    for i in range(n_images):
      img = (rng.rand(3) * 255 * (0.6 + 0.4 * np.sin(xx / (7 + i % 5))[..., None])).astype(np.uint8)
      buf = io.BytesIO()
      Image.fromarray(img).save(buf, "JPEG", quality=90)
      masks = []
      for _ in range(3):
        m = np.zeros(size, bool)
        y, x, h, w = rng.randint(0, 250), rng.randint(0, 350), rng.randint(20, 120), rng.randint(20, 150)
        m[y : y + h, x : x + w] = True
        masks.append(m)
      self.items.append((buf.getvalue(), [f"object {i % 16}", f"thing {i % 8}", f"region {i}"], masks))

  def __len__(self):
    return len(self.items)

  def phrases(self, i):
    return self.items[i][1]

  def __getitem__(self, i):
    data, phrases, masks = self.items[i]
    image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return {"image": image, "image_id": str(i), "phrases": phrases, "masks": masks}


def in_process(source, opts, n):
  transform, tokenize = PCPlusTransform(source, PairIndex(source), opts), Tokenize()
  rng = np.random.default_rng(0)
  tokenize(transform(0, rng))  # warm up (tokenizer construction)
  t = time.perf_counter()
  with_support = 0
  for i in range(n):
    s = tokenize(transform(i % (3 * len(source)), rng))
    with_support += s["text_weight"] < 1
  return n / (time.perf_counter() - t), with_support / n


def one_worker(source, opts, n, batch=8):
  it = iter(make_loader(source, opts, batch_size=batch, seed=0, worker_count=1))
  next(it)  # worker start-up
  t = time.perf_counter()
  for _ in range(n // batch):
    next(it)
  return (n // batch) * batch / (time.perf_counter() - t)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--n", type=int, default=400)
  p.add_argument("--size", type=int, default=352)
  args = p.parse_args()
  source, opts = JpegSource(), PCPlusOptions(image_size=args.size)
  rate, frac = in_process(source, opts, args.n)
  worker = one_worker(source, opts, args.n)
  print(f"PC+ transform at {args.size} px ({frac:.0%} of samples with a visual support):")
  print(f"  in-process (one worker's work): {rate:6.1f} samples/s  ({rate / TARGET:.2f}x the {TARGET:.0f}/s target)")
  print(f"  grain loader, 1 worker process: {worker:6.1f} samples/s  ({worker / TARGET:.2f}x the target)")


if __name__ == "__main__":
  main()
