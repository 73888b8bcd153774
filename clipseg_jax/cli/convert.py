"""Convert a checkpoint between formats: hf (transformers dir), original (decoder .pth), flax (ours).

Example: clipseg-jax convert CIDAS/clipseg-rd64-refined rd64-refined.pth --to original
hf and flax directories get a model card (README.md) with the evaluations kept in SRC/eval/ and given
with --eval; original files get a `<file>.json` naming the CLIP they need (they hold the decoder only).
"""

from __future__ import annotations

from pathlib import Path


def add_arguments(p):
  p.add_argument("src", help="anything load_model takes")
  p.add_argument("out", help="output directory (hf, flax) or .pth file (original)")
  p.add_argument("--to", required=True, choices=["hf", "original", "flax"])
  p.add_argument("--clip", default=None, help="HF CLIP checkpoint, when SRC is an original .pth")
  p.add_argument("--revision", default=None, help="the hub revision (branch, tag or commit) of a hub id SRC")
  p.add_argument(
    "--extract-layers",
    type=int,
    nargs="+",
    default=None,
    metavar="N",
    help="the CLIP layers the decoder reads, for an original .pth SRC without its .json sidecar (e.g. 3 6 9)",
  )
  p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
  p.add_argument(
    "--eval",
    action="append",
    default=[],
    metavar="REPORT",
    help="an evaluation report for the model card (`clipseg-jax eval`'s TASK.json or its --out directory)",
  )


def run(args):
  from clipseg_jax import load_model
  from clipseg_jax.export import original_sidecar, read_reports, reports_beside

  out = Path(args.out)
  written = (out, original_sidecar(out)) if args.to == "original" else (out,)
  taken = [p for p in written if p.exists() and not (p.is_dir() and not any(p.iterdir()))]
  if taken and not args.overwrite:
    raise FileExistsError(f"{taken[0]} already exists: pass --overwrite to replace it, or choose another OUT")
  reports = reports_beside(args.src) + read_reports(args.eval)
  model = load_model(args.src, clip=args.clip, revision=args.revision, extract_layers=args.extract_layers)
  if args.to == "original":
    written = model.export_original(args.out)
  else:
    written = {"hf": model.export_hf, "flax": model.save}[args.to](args.out, evaluation=reports)
  print(f"wrote {args.to} checkpoint to {written}")
