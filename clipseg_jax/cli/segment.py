"""Segment images with text prompts; writes a mask PNG and an overlay PNG per (image, prompt).

Example: clipseg-jax segment photo.jpg --prompt "a cat" --prompt "a sofa" --out masks/
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from tqdm import tqdm

from clipseg_jax import visualize
from clipseg_jax.preprocess import load_image

DEFAULT_CHECKPOINT = "CIDAS/clipseg-rd64-refined"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def add_arguments(p):
  p.add_argument("images", nargs="+", help="image files, directories or glob patterns")
  p.add_argument("--prompt", action="append", default=[], help="a text prompt (repeatable)")
  p.add_argument("--support", action="append", default=[],
                 help="a visual prompt: support image (repeatable, paired with --support-mask)")
  p.add_argument("--support-mask", action="append", default=[], help="mask for the matching --support")
  p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT,
                 help="anything load_model takes: hub id, HF dir, clipseg-jax checkpoint, original .pth")
  p.add_argument("--clip", default=None, help="HF CLIP checkpoint, with an original .pth --checkpoint")
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--threshold", type=float, default=None, help="write binary masks at this probability")


def expand_images(specs) -> list[Path]:
  paths = []
  for spec in specs:
    p = Path(spec)
    if p.is_dir():
      paths += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
    elif any(c in spec for c in "*?["):
      matches = sorted(Path(m) for m in glob.glob(spec, recursive=True))
      if not matches:
        raise FileNotFoundError(f"no images match {spec!r}")
      paths += matches
    elif p.exists():
      paths.append(p)
    else:
      raise FileNotFoundError(f"image not found: {spec}")
  if not paths:
    raise FileNotFoundError(f"no images found in {' '.join(specs)}")
  return paths


def run(args):
  from clipseg_jax import load_model

  if len(args.support) != len(args.support_mask):
    raise ValueError(f"{len(args.support)} --support images but {len(args.support_mask)} --support-mask files")
  prompts = list(args.prompt)
  labels = list(args.prompt)
  for image, mask in zip(args.support, args.support_mask):
    prompts.append((load_image(image), load_image(mask)))
    labels.append(f"support {Path(image).stem}")
  if not prompts:
    raise ValueError("give at least one --prompt (or --support with --support-mask)")
  paths = expand_images(args.images)
  model = load_model(args.checkpoint, clip=args.clip)
  cond = model.encode_prompts(prompts)
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  for path in tqdm(paths, desc="segment", unit="image", disable=len(paths) < 2):
    image = load_image(path)
    probs = model.predict_conditions([image], cond)[0]
    for i, (label, prob) in enumerate(zip(labels, probs)):
      mask = prob > args.threshold if args.threshold is not None else prob
      stem = f"{path.stem}_{i}_{visualize.slug(label)}"
      visualize.mask_image(mask).save(out / f"{stem}_mask.png")
      visualize.overlay(image, mask, [label]).save(out / f"{stem}_overlay.png")
    visualize.overlay(image, probs, labels).save(out / f"{path.stem}_overlay.png")
  print(f"wrote masks and overlays for {len(paths)} image(s) x {len(prompts)} prompt(s) to {out}")

