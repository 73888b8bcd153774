"""The main job on the embedded default, offline: train CLIPSeg's decoder on the built-in synthetic
dataset with the embedded pretrained small CLIP frozen, evaluate it on held-out scenes, write
overlays, and set it beside two ablations (a randomly initialised backbone, the prompt withheld).
"""

from __future__ import annotations

import time
from pathlib import Path

CONFIG = "synthetic"  # the recipe (clipseg_jax/configs/synthetic.py)
ABLATIONS = {
  "CLIPSeg (pretrained small CLIP, frozen)": [],
  "ablation: randomly initialised backbone": ["--config.model.clip=random:embedded:synthetic-clip"],
  "ablation: prompt withheld": ["--config.model.withhold_prompt=True"],
}


def add_arguments(p):
  p.add_argument("--out", default="out/demo", help="output directory (runs resume when rerun)")
  p.add_argument("--data-dir", default=None, help="prepared datasets (default: OUT/tfds)")
  p.add_argument("--steps", type=int, default=None, help="override the config's total_steps")
  p.add_argument("--no-ablations", action="store_true", help="train only the main run")
  p.add_argument("--eval-images", type=int, default=200, help="held-out test scenes to score")
  p.add_argument(
    "--dataset",
    default="synthetic",
    choices=["synthetic", "synthetic/tiny"],
    help="the built-in dataset's config (tiny: a 24-scene smoke test)",
  )


def run(args):
  import logging

  from absl import logging as absl_logging

  from clipseg_jax import load_model
  from clipseg_jax.evaluation.protocols import EvalOptions, predictor_for, referring
  from clipseg_jax.input_pipeline import build
  from clipseg_jax.input_pipeline.sources import tfds_builder
  from clipseg_jax.train.recipes import load_config
  from clipseg_jax.train.trainer import train

  logging.basicConfig(level=logging.WARNING, format="%(message)s")
  absl_logging.set_verbosity(absl_logging.WARNING)
  out = Path(args.out)
  data_dir = Path(args.data_dir or out / "tfds").expanduser()
  t0 = time.perf_counter()
  if not tfds_builder(args.dataset, data_dir).is_prepared():
    print(f"building the {args.dataset} dataset in {data_dir} ...")
    build(args.dataset, data_dir=data_dir)
  print(f"data ready ({time.perf_counter() - t0:.0f} s)")
  rows = []
  runs = list(ABLATIONS.items())[: 1 if args.no_ablations else None]
  for name, extra in runs:
    workdir = out / ("run" if not extra else extra[0].split("=")[0].split(".")[-1])
    overrides = [f"--config.data.data_dir={data_dir}", f"--config.data.name={args.dataset}", *extra]
    if args.steps:
      overrides.append(f"--config.total_steps={args.steps}")
    cfg = load_config(CONFIG, overrides)
    start = time.perf_counter()
    print(f"\n== {name}: {cfg.total_steps} steps, workdir {workdir}")
    if train(cfg, workdir)["step"] < cfg.total_steps:  # SIGTERM: the run saved its state
      print(f"stopped at a SIGTERM; rerun the same command to resume {workdir}")
      return 0
    model = load_model(workdir)
    predictor = predictor_for(model)  # the prompt-withheld run recorded it in its config
    numbers, _ = referring(predictor, EvalOptions(data_dir=str(data_dir), limit=args.eval_images), args.dataset, "test")
    seconds = time.perf_counter() - start
    rows.append((name, numbers, seconds))
    at_half, best, t = iou_fg(numbers)
    print(
      f"-> {name}: IoU_FG {at_half}% at 0.5, {best}% at the best threshold ({t}); {seconds:.0f} s, "
      f"{time.perf_counter() - t0:.0f} s since the start"
    )
    if not extra:
      overlays(model, args.dataset, data_dir, out)
  print(f"\nHeld-out synthetic test scenes ({rows[0][1]['images']} images, every phrase; IoU in %):\n")
  print("| run | IoU_FG @0.5 | IoU_FG best (t) | mIoU best | AP | train+eval time |")
  print("| --- | ---: | ---: | ---: | ---: | ---: |")
  for name, n, seconds in rows:
    at_half, best, t = iou_fg(n)
    print(
      f"| {name} | {at_half} | {best} ({t}) | {100 * n['miou']['value']:.1f} | {100 * n['ap']:.1f} | {seconds:.0f} s |"
    )
  print(
    f"\ntotal {time.perf_counter() - t0:.0f} s; overlays in {out}/overlay_*.png; "
    f"the trained model loads with clipseg_jax.load_model('{out / 'run'}')"
  )


def iou_fg(numbers: dict) -> tuple[str, str, str]:
  """Foreground IoU of an evaluation as printed: (% at 0.5, % at the best threshold, that threshold)."""
  iou = numbers["iou_fg"]
  return f"{100 * iou['fixed']['0.5']:.1f}", f"{100 * iou['value']:.1f}", f"{iou['threshold']:.2f}"


def overlays(model, dataset, data_dir, out: Path, n: int = 3):
  """A few held-out scenes, each with its phrases drawn over it."""
  from PIL import Image

  from clipseg_jax import visualize
  from clipseg_jax.input_pipeline import open_source

  source = open_source(dataset, "test", data_dir=str(data_dir))
  for i in range(min(n, len(source))):
    r = source[i]
    phrases = list(dict.fromkeys(r["phrases"]))[:4]
    probs = model.predict(r["image"], phrases)[0]
    shown = visualize.overlay(r["image"], probs, phrases).resize((384, 384))
    visualize.beside(Image.fromarray(r["image"]).resize((384, 384)), shown).save(out / f"overlay_{i}.png")
