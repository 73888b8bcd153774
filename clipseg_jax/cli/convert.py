"""Convert a checkpoint between formats: hf (transformers dir), original (decoder .pth), flax (ours), or
a deployable artifact: stablehlo (a jax.export function, weights baked in) or onnx (via PyTorch).

Example: clipseg-jax convert CIDAS/clipseg-rd64-refined rd64-refined.pth --to original
hf and flax directories get a model card (README.md) with the evaluations kept in SRC/eval/ and given
with --eval; original files get a `<file>.json` naming the CLIP they need (they hold the decoder only).
stablehlo and onnx write a folder: the model file, spec.json (inputs, preprocessing, prompts, sizes) and,
unless --prompt bakes the prompts in, the tokenizer: clipseg-jax convert embedded:synthetic seg/ --to
stablehlo --prompt "a red circle" writes a function of pixels alone (clipseg_jax.artifact says more).
"""

from __future__ import annotations

from pathlib import Path


def add_arguments(p):
  p.add_argument("src", help="anything load_model takes")
  p.add_argument("out", help="output directory (hf, flax, stablehlo, onnx) or .pth file (original)")
  p.add_argument("--to", required=True, choices=["hf", "original", "flax", "stablehlo", "onnx"])
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
  p.add_argument(
    "--prompt",
    action="append",
    default=[],
    help="stablehlo/onnx: a text prompt to bake in (repeatable): the artifact then takes pixels only",
  )
  p.add_argument(
    "--image-size", type=int, default=None, help="stablehlo/onnx: the side the artifact takes (default: the model's)"
  )
  p.add_argument(
    "--platforms",
    nargs="+",
    default=None,
    metavar="P",
    help="stablehlo: the platforms to lower for (default: cpu cuda)",
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
  artifact_only = {"--prompt": args.prompt, "--image-size": args.image_size, "--platforms": args.platforms}
  if args.to not in ("stablehlo", "onnx") and (given := [k for k, v in artifact_only.items() if v]):
    raise ValueError(f"{', '.join(given)}: only for --to stablehlo or onnx")
  if args.platforms and args.to != "stablehlo":
    raise ValueError("--platforms applies to --to stablehlo only")
  if args.eval and args.to in ("stablehlo", "onnx"):
    raise ValueError("--eval: only for --to hf or flax (their model cards)")
  model = load_model(args.src, clip=args.clip, revision=args.revision, extract_layers=args.extract_layers)
  if args.to in ("stablehlo", "onnx"):
    from clipseg_jax import artifact

    options = dict(prompts=args.prompt or None, image_size=args.image_size, overwrite=args.overwrite)
    if args.to == "stablehlo":
      written = artifact.export_stablehlo(model, out, platforms=args.platforms or artifact.PLATFORMS, **options)
    else:
      written = artifact.export_onnx(model, out, **options)
    spec = artifact.read_spec(written)
    size = spec["bytes"] / 2**20
    print(f"wrote {args.to} artifact to {written} ({spec['file']}: {size:.1f} MiB; inputs in {artifact.SPEC_FILE})")
    return
  if args.to == "original":
    written = model.export_original(args.out)
  else:
    written = {"hf": model.export_hf, "flax": model.save}[args.to](args.out, evaluation=reports)
  print(f"wrote {args.to} checkpoint to {written}")
