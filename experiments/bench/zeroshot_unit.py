"""The zero-shot protocol's unit of work: one image x 21 prompts at 352 px (full ViT-B/16, refined
head, random weights, float32), clipseg-jax against transformers' PyTorch model fed the same 21
(image, prompt) pairs, measured side by side in one run. Target: at least 10x faster.

  python experiments/bench/zeroshot_unit.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics

import jax
import numpy as np

from experiments.bench.common import describe, interleaved, models, speedups

PROMPTS = [
  "background",
  "airplane",
  "bicycle",
  "bird",
  "boat",
  "bottle",
  "bus",
  "car",
  "cat",
  "chair",
  "cow",
  "dining table",
  "dog",
  "horse",
  "motorbike",
  "person",
  "potted plant",
  "sheep",
  "sofa",
  "train",
  "tv monitor",
]


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--size", type=int, default=352)
  args = p.parse_args()
  import torch

  ours, theirs = models()
  pixels = np.random.RandomState(0).randn(1, args.size, args.size, 3).astype(np.float32)

  def clipseg_jax():  # text prompts encoded, the image once, 21 decodes in one call
    cond = ours.encode_text(PROMPTS)
    return jax.block_until_ready(ours.decode(ours.encode_images(pixels), cond))

  tok = ours.tokenizer(PROMPTS, padding=True, return_tensors="pt")
  torch_pixels = torch.from_numpy(np.repeat(pixels.transpose(0, 3, 1, 2), len(PROMPTS), 0))

  def transformers():
    return theirs(pixel_values=torch_pixels, **tok).logits

  ours_logits = np.asarray(clipseg_jax())[0]
  ref_logits = transformers().numpy()
  err = np.abs(ours_logits - ref_logits).max() / np.abs(ref_logits).max()
  t = interleaved({"ours": clipseg_jax, "ref": transformers}, args.repeats, warmup=0)  # both ran once above
  t_ours, t_ref = statistics.median(t["ours"]), statistics.median(t["ref"])
  print(
    f"1 image x {len(PROMPTS)} prompts at {args.size} px, float32, this CPU "
    f"({jax.devices()[0].device_kind}, torch {torch.get_num_threads()} threads)"
  )
  print(f"  clipseg-jax   {t_ours * 1e3:8.0f} ms")
  print(f"  transformers  {t_ref * 1e3:8.0f} ms")
  print(f"  speed-up      {describe(speedups(t))}   (target >= 10x; logits agree to {err:.1e} relative)")


if __name__ == "__main__":
  main()
