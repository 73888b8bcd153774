"""Convert a checkpoint between formats: hf (transformers dir), original (decoder .pth), flax (ours).

Example: clipseg-jax convert CIDAS/clipseg-rd64-refined rd64-refined.pth --to original
"""

from __future__ import annotations


def add_arguments(p):
  p.add_argument("src", help="anything load_model takes")
  p.add_argument("out", help="output directory (hf, flax) or .pth file (original)")
  p.add_argument("--to", required=True, choices=["hf", "original", "flax"])
  p.add_argument("--clip", default=None, help="HF CLIP checkpoint, when SRC is an original .pth")


def run(args):
  from clipseg_jax import load_model

  model = load_model(args.src, clip=args.clip)
  written = {"hf": model.export_hf, "original": model.export_original, "flax": model.save}[args.to](args.out)
  print(f"wrote {args.to} checkpoint to {written}")
