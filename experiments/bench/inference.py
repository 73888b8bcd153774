"""Inference for people, end to end: PIL images in, probability maps at each image's size out.
clipseg-jax `predict` against transformers' PyTorch pipeline (CLIPSegProcessor + the model with its
default attention + sigmoid + bilinear resize back), full ViT-B/16 refined model, random weights,
float32, 640x480 images, measured side by side in one run.

  1 image x 1 prompt:   latency            (target: clipseg-jax at least 1.25x faster)
  8 images x 5 prompts: throughput         (target: at least 5x)

  python -m experiments.bench.inference [--repeats 5]
  python -m experiments.bench.inference --gpu [--images 64] [--dtypes float32 bfloat16]
      # zero-shot 1 image x 21 prompts (PASCAL's background + 20 classes) and 64 images x 1 prompt,
      # float32 and bf16, against transformers on the same device in the same run (target: >= 2x);
      # runs on CPU too with small sizes: --gpu --images 2 --dtypes float32 --repeats 1
"""

from __future__ import annotations

import argparse
import os
import statistics

import jax
import numpy as np
from PIL import Image

from experiments.bench.common import describe, interleaved, models, speedups

PROMPTS = ["a person", "a dog", "a bicycle", "the sky", "something to sit on"]


def photos(n: int, seed: int = 0) -> list[Image.Image]:
  rng = np.random.RandomState(seed)
  return [Image.fromarray(rng.randint(0, 256, (480, 640, 3), np.uint8)) for _ in range(n)]


def reference_pipeline(model, tokenizer, size: int, device: str = "cpu", dtype=None):
  """The transformers way: one processor + model call per image with all its prompts (on `device`,
  pixels in `dtype` when given, as the model's weights)."""
  import torch
  from transformers import CLIPSegProcessor, ViTImageProcessor

  processor = CLIPSegProcessor(
    image_processor=ViTImageProcessor(
      size={"height": size, "width": size},
      resample=Image.BILINEAR,
      image_mean=[0.485, 0.456, 0.406],
      image_std=[0.229, 0.224, 0.225],
    ),
    tokenizer=tokenizer,
  )

  def predict(images, prompts):
    out = []
    for image in images:
      inputs = processor(text=prompts, images=[image] * len(prompts), padding=True, return_tensors="pt")
      inputs = {k: v.to(device) for k, v in inputs.items()}
      if dtype is not None:
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
      logits = model(**inputs).logits.float().reshape(len(prompts), 1, size, size)
      probs = torch.nn.functional.interpolate(logits, size=(image.height, image.width), mode="bilinear")
      out.append(torch.sigmoid(probs)[:, 0].cpu().numpy())
    return np.stack(out)

  return predict


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--repeats", type=int, default=5, help="rounds of each case, the contenders taking turns")
  p.add_argument("--gpu", action="store_true", help="the accelerator cases: 1 x 21 zero-shot and N x 1")
  p.add_argument("--images", type=int, default=64, help="--gpu: images of the N x 1 case")
  p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
  args = p.parse_args()
  if args.gpu:
    return accelerator(args)
  import torch

  ours, theirs = models()
  reference = reference_pipeline(theirs, ours.tokenizer, ours.image_size)
  one, eight = photos(1), photos(8, seed=1)

  def cold(images, prompts):  # a new prompt every call: no help from the text-embedding cache
    ours._text_cache.clear()
    return ours.predict(images, prompts)

  err = np.abs(cold(one, PROMPTS[:2]) - reference(one, PROMPTS[:2])).max()
  rows = []
  for name, images, prompts, repeats in (
    ("1 image x 1 prompt", one, PROMPTS[:1], args.repeats),
    ("8 images x 5 prompts", eight, PROMPTS, args.repeats),
  ):
    t = interleaved(
      {
        "ours": lambda images=images, prompts=prompts: cold(images, prompts),
        "cached": lambda images=images, prompts=prompts: ours.predict(images, prompts),
        "ref": lambda images=images, prompts=prompts: reference(images, prompts),
      },
      repeats,
    )
    rows.append((name, len(images), {k: statistics.median(v) for k, v in t.items()}, speedups(t)))
  print(
    f"640x480 images at 352 px, float32, this CPU ({jax.devices()[0].device_kind}, "
    f"torch {torch.get_num_threads()} threads); probabilities agree to {err:.1e}; "
    f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
  )
  print("median times of the rounds (contenders taking turns); speed-up = median of per-round ratios")
  print(f"{'':22s} {'clipseg-jax':>12s} {'(cached text)':>14s} {'transformers':>13s}   speed-up")
  for name, _, t, speedup in rows:
    print(
      f"{name:22s} {t['ours'] * 1e3:9.0f} ms {t['cached'] * 1e3:11.0f} ms {t['ref'] * 1e3:10.0f} ms   "
      f"{describe(speedup)}"
    )
  print("targets: 1x1 >= 1.25x, 8x5 >= 5x (clipseg-jax's uncached column against transformers)")


PASCAL = (
  "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
  "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train", "tv monitor",
)  # fmt: skip


def accelerator(args):
  """Zero-shot 1 image x 21 prompts and N images x 1 prompt at 352 px, per dtype: clipseg-jax `predict`
  (text cache cleared each call) against transformers (processor + model + sigmoid + resize) on the same
  device (cuda when torch sees one), the contenders taking turns."""
  import tempfile

  import jax.numpy as jnp
  import torch

  from clipseg_jax import load_model

  ours, theirs = models()
  directory = tempfile.mkdtemp(prefix="clipseg_bench_")
  ours.export_hf(directory)
  where = "cuda" if torch.cuda.is_available() else "cpu"
  one, many = photos(1), photos(args.images, seed=1)
  print(
    f"640x480 images at 352 px, random-weight refined ViT-B/16; clipseg-jax on {jax.devices()[0].device_kind}, "
    f"transformers on {torch.cuda.get_device_name() if where == 'cuda' else 'cpu'}"
  )
  print(f"{'':24s} {'dtype':9s} {'clipseg-jax':>12s} {'transformers':>13s}   speed-up   max |dp|")
  for name in args.dtypes:
    model = ours if name == "float32" else load_model(directory, dtype=getattr(jnp, name))
    t_dtype = getattr(torch, name)
    ref = reference_pipeline(theirs.to(where, t_dtype), model.tokenizer, model.image_size, where, t_dtype)

    def cold(images, prompts, model=model):  # a new prompt every call: no help from the text cache
      model._text_cache.clear()
      return model.predict(images, prompts)

    for case, images, prompts in (
      ("1 image x 21 prompts", one, list(PASCAL)),
      (f"{len(many)} images x 1 prompt", many, ["a person"]),
    ):
      err = float(np.abs(cold(images[:1], prompts) - ref(images[:1], prompts)).max())
      t = interleaved(
        {"ours": lambda i=images, p=prompts: cold(i, p), "ref": lambda i=images, p=prompts, r=ref: r(i, p)},
        args.repeats,
      )
      mid = {k: statistics.median(v) * 1e3 for k, v in t.items()}
      print(f"{case:24s} {name:9s} {mid['ours']:9.0f} ms {mid['ref']:10.0f} ms   {describe(speedups(t))}   {err:.1e}")
  print("target on a GPU: clipseg-jax at least 2x transformers for both cases")


if __name__ == "__main__":
  main()
