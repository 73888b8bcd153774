"""Pick each prompt's threshold on a folder of labelled examples; writes a thresholds JSON for segment --thresholds.

Example: clipseg-jax calibrate examples/ --out thresholds.json
The folder holds classes.txt (one prompt per line: line i names label i), images/NAME.EXT and labels/NAME.png
(8-bit class indices: 0 background, i for prompt i, 255 ignored). Per prompt, the threshold of the grid with
the best mean IoU over the images wins (clipseg_jax.labelmap.calibrate); the file also records that IoU.
"""

from __future__ import annotations

import json
from pathlib import Path

from clipseg_jax import algebra, labelmap
from clipseg_jax.cli.segment import positive_int
from clipseg_jax.weights.io import DEFAULT_CHECKPOINT


def add_arguments(p):
  p.add_argument("folder", help="classes.txt, images/ and labels/ (see above)")
  p.add_argument("--out", default="thresholds.json", help="the thresholds JSON to write (default: thresholds.json)")
  p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="anything load_model takes (default: embedded)")
  p.add_argument("--clip", default=None, help="HF CLIP checkpoint, with an original .pth --checkpoint")
  p.add_argument(
    "--grid",
    default=None,
    help="thresholds to try, comma-separated (default: 0.05, 0.10, ..., 0.95)",
  )
  p.add_argument("--logic", choices=algebra.LOGICS, default=algebra.DEFAULT_LOGIC, help="for expression prompts")
  p.add_argument("--batch-size", type=positive_int, default=4, help="images per vision-tower call")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype")
  p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def parse_grid(text: str | None) -> tuple[float, ...]:
  if text is None:
    return labelmap.CALIBRATION_GRID
  try:
    return tuple(float(v) for v in text.split(","))
  except ValueError:
    raise ValueError(f"--grid must be comma-separated numbers, got {text!r}") from None


def run(args):
  import jax.numpy as jnp

  from clipseg_jax import load_model

  out = Path(args.out)
  if out.exists() and not args.overwrite:
    raise FileExistsError(f"{out} already exists: pass --overwrite to replace it, or choose another --out")
  grid = parse_grid(args.grid)
  labelmap.read_folder(args.folder)  # a bad folder fails before the model loads
  model = load_model(args.checkpoint, clip=args.clip, dtype=jnp.dtype(args.dtype))
  result = labelmap.calibrate(model, args.folder, grid=grid, logic=args.logic, batch_size=args.batch_size)
  result["checkpoint"] = args.checkpoint
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2) + "\n")
  for prompt, t in result["thresholds"].items():
    print(f"{t:.2f}  mean IoU {result['miou'][prompt]:.3f}  {prompt}")
  print(f"wrote thresholds for {len(result['thresholds'])} prompt(s) from {result['images']} image(s) to {out}")
