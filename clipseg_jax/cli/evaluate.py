"""Evaluate a checkpoint with one of the paper's protocols; writes JSON, a Markdown table and a PNG.

Example: clipseg-jax eval --checkpoint CIDAS/clipseg-rd64-refined --task pascal5i --data-dir ~/tensorflow_datasets
"""

from __future__ import annotations

import time

from clipseg_jax.input_pipeline.sources import default_data_dir


def add_arguments(p):
  from clipseg_jax.evaluation import PROTOCOLS

  p.add_argument("--checkpoint", required=True, help="anything load_model takes")
  p.add_argument("--clip", default=None, help="HF CLIP checkpoint, with an original .pth --checkpoint")
  p.add_argument("--task", required=True, choices=sorted(PROTOCOLS))
  p.add_argument("--data-dir", default=default_data_dir(), help="prepared datasets (or the folder dataset)")
  p.add_argument("--dataset", default=None, help="override the task's dataset, e.g. synthetic/tiny")
  p.add_argument("--split", default=None)
  p.add_argument("--threshold", type=float, default=None, help="fix the threshold (default: best)")
  p.add_argument("--fold", type=int, default=None, choices=range(4), help="one-shot fold (default: all)")
  p.add_argument(
    "--episodes", type=int, default=1000, help="COCO-20i episodes per fold (PASCAL-5i runs one per listed val image)"
  )
  p.add_argument("--limit", type=int, default=None, help="only the first N images/episodes")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument(
    "--unseen",
    type=int,
    nargs="+",
    default=None,
    metavar="N",
    help="pascal_zeroshot: JoEm's unseen-N splits to report (default: 2 4 5 6 8 10; the paper's columns need 5 and 2)",
  )
  p.add_argument(
    "--background-scale",
    type=float,
    default=None,
    help="pascal_zeroshot: factor on the background prompt's probability (default 3, as the original)",
  )
  p.add_argument(
    "--templates",
    nargs="+",
    default=None,
    metavar="TEMPLATE",
    help="a prompt ensemble: average each text prompt over these templates ('a photo of a {}.' ...); "
    "'pcplus': the PhraseCut+ training templates",
  )
  p.add_argument("--out", default="out/eval", help="output directory")
  p.add_argument("--overwrite", action="store_true", help="replace the task's report left in --out by an earlier run")


def run(args):
  from clipseg_jax import load_model
  from clipseg_jax.evaluation import report
  from clipseg_jax.evaluation.protocols import EvalOptions, check_model_fits, run_protocol

  check_options(args)
  model = load_model(args.checkpoint, clip=args.clip)
  check_model_fits(model, args.task)
  opts = EvalOptions(
    data_dir=args.data_dir,
    dataset=args.dataset,
    split=args.split,
    limit=args.limit,
    threshold=args.threshold,
    fold=args.fold,
    episodes=args.episodes,
    seed=args.seed,
    templates=ensemble(args.templates),
    **zero_shot_options(args),
  )
  start = time.perf_counter()
  numbers, examples = run_protocol(model, args.task, opts)
  meta = {
    "checkpoint": str(args.checkpoint),
    "seconds": round(time.perf_counter() - start, 1),
    "options": {k: v for k, v in vars(opts).items() if k != "progress"},
  }
  print(report.write(args.out, args.task, numbers, examples, meta))
  print(f"\nwrote {args.out}/{args.task}.json, .md, _predictions.png and the curves' PNGs")


def check_options(args):
  """Flags a run would fail on (or write invalid JSON for) after loading a model, refused before."""
  from pathlib import Path

  report = Path(args.out) / f"{args.task}.json"
  if report.exists() and not args.overwrite:
    raise FileExistsError(
      f"{report} already exists (from an earlier run?): pass --overwrite to replace it, or choose another --out"
    )
  if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:  # NaN fails this too
    raise ValueError(f"--threshold must be a probability in [0, 1], got {args.threshold}")
  for flag in ("limit", "episodes"):
    value = getattr(args, flag)
    if value is not None and value < 1:
      raise ValueError(f"--{flag} must be at least 1, got {value}")
  if args.background_scale is not None and not 0.0 < args.background_scale < float("inf"):
    raise ValueError(f"--background-scale must be a finite number above 0, got {args.background_scale}")


def zero_shot_options(args) -> dict:
  """EvalOptions fields the zero-shot flags set (unset flags keep EvalOptions' defaults)."""
  out = {}
  if args.unseen is not None:
    out["unseen"] = tuple(args.unseen)
  if args.background_scale is not None:
    out["background_scale"] = args.background_scale
  return out


def ensemble(templates):
  """--templates as given, 'pcplus' standing for the PhraseCut+ training templates."""
  if templates == ["pcplus"]:
    from clipseg_jax.input_pipeline.pcplus import TEMPLATES

    return tuple(TEMPLATES)
  return None if templates is None else tuple(templates)
