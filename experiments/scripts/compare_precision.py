"""bfloat16 compute (the original's AMP: `optim.compute_dtype=bfloat16`, float32 master weights) against
float32, side by side on the demo's recipe (`synthetic`): the same seed and steps, training time, final loss
and held-out IoU of each, and their ratio. Optionally with the paper recipes' decoder dropout.

  python experiments/scripts/compare_precision.py --steps 300 [--dataset synthetic/tiny] [--dropout 0.1]

On CPUs without bf16 units (e.g. AVX2 only) bf16 is emulated and slower: the speed ratio is meaningful on
GPUs/TPUs, the quality figures anywhere.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--steps", type=int, default=300)
  ap.add_argument("--dataset", default="synthetic", choices=["synthetic", "synthetic/tiny"])
  ap.add_argument("--data-dir", default=None, help="prepared datasets (default: a temporary folder)")
  ap.add_argument("--out", default=None, help="workdirs (default: a temporary folder)")
  ap.add_argument("--eval-images", type=int, default=100)
  ap.add_argument("--dropout", type=float, default=None, help="model.decoder_dropout (default: the recipe's)")
  args = ap.parse_args()

  from absl import logging as absl_logging

  from clipseg_jax import load_model
  from clipseg_jax.evaluation.protocols import EvalOptions, predictor_for, referring
  from clipseg_jax.input_pipeline import build
  from clipseg_jax.input_pipeline.sources import tfds_builder
  from clipseg_jax.train.recipes import load_config
  from clipseg_jax.train.trainer import train

  logging.basicConfig(level=logging.WARNING)
  absl_logging.set_verbosity(absl_logging.WARNING)
  out = Path(args.out or tempfile.mkdtemp(prefix="precision"))
  data_dir = Path(args.data_dir or out / "tfds")
  if not tfds_builder(args.dataset, data_dir).is_prepared():
    build(args.dataset, data_dir=data_dir)
  rows = {}
  for dtype in ("float32", "bfloat16"):
    overrides = [
      f"--config.data.data_dir={data_dir}",
      f"--config.data.name={args.dataset}",
      f"--config.total_steps={args.steps}",
      f"--config.optim.compute_dtype={dtype}",
      "--config.eval_every=0",
      f"--config.checkpoint_every={args.steps}",
    ]
    if args.dropout is not None:
      overrides.append(f"--config.model.decoder_dropout={args.dropout}")
    cfg = load_config("synthetic", overrides)
    workdir = out / dtype
    start = time.perf_counter()
    result = train(cfg, workdir, show_progress=False)
    seconds = time.perf_counter() - start
    numbers, _ = referring(
      predictor_for(load_model(workdir)),
      EvalOptions(data_dir=str(data_dir), limit=args.eval_images),
      args.dataset,
      "test",
    )
    rate = result.get("images_per_s", float("nan"))  # the steps of the last log window: no compilation
    rows[dtype] = (seconds, result["loss"], numbers["iou_fg"]["fixed"]["0.5"], numbers["iou_fg"]["value"], rate)
    print(
      f"{dtype}: {seconds:.1f} s for {args.steps} steps (feature cache and compilation included), "
      f"{rate:.1f} images/s in the last log window, final loss {result['loss']:.4f}, "
      f"IoU_FG@0.5 {100 * rows[dtype][2]:.1f}%, best {100 * rows[dtype][3]:.1f}%",
      flush=True,
    )
  (t32, l32, i32, _, r32), (t16, l16, i16, _, r16) = rows["float32"], rows["bfloat16"]
  print(
    f"bf16 / f32: wall time {t16 / t32:.2f}x, step throughput {r16 / r32:.2f}x, final loss {l16 / l32:.3f}x, "
    f"IoU_FG@0.5 {100 * (i16 - i32):+.1f} points"
  )


if __name__ == "__main__":
  main()
