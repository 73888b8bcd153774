"""Make the embedded CLIPSeg model (`load_model("embedded:synthetic")`): the decoder that the demo's
recipe (`clipseg-jax demo`, config `synthetic`) trains on the package's small CLIP, scored on the
held-out synthetic test scenes, written to `clipseg_jax/assets/synthetic_clipseg/` as a decoder-only
directory (the CLIP itself ships once, in `assets/synthetic_clip/`).

  python experiments/scripts/make_embedded.py                          # reuse out/demo/run, or train it there
  python experiments/scripts/make_embedded.py --workdir runs/x --steps 3000

A workdir that holds no checkpoint yet is trained first with the demo's recipe (resumable: rerun the
same command); one that exists is used as it is (its latest checkpoint).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import jax
import numpy as np

from clipseg_jax import load_model
from clipseg_jax.cli.demo import CONFIG
from clipseg_jax.evaluation.protocols import EvalOptions, run_protocol
from clipseg_jax.export import export_decoder
from clipseg_jax.weights.io import EMBEDDED

ROOT = Path(__file__).resolve().parents[2]
NAME = "embedded:synthetic"
CLIP = "embedded:synthetic-clip"
TASK = "synthetic"  # `clipseg-jax eval --task synthetic`: the held-out test split, every phrase


def train_demo(workdir: Path, data_dir: Path, steps: int | None):
  """The demo's main run (`clipseg-jax demo --no-ablations`) in `workdir`."""
  from clipseg_jax.input_pipeline import build
  from clipseg_jax.input_pipeline.sources import tfds_builder
  from clipseg_jax.train.recipes import load_config
  from clipseg_jax.train.trainer import train

  if not tfds_builder("synthetic", data_dir).is_prepared():
    build("synthetic", data_dir=data_dir)
  overrides = [f"--config.data.data_dir={data_dir}", "--config.data.name=synthetic"]
  if steps:
    overrides.append(f"--config.total_steps={steps}")
  train(load_config(CONFIG, overrides), workdir)


def plain(x):
  """JSON-ready numbers (numpy scalars and arrays as Python values)."""
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  raise TypeError(type(x))


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", default="out/demo/run", help="the demo run to ship (trained here if empty)")
  p.add_argument("--data-dir", default="out/demo/tfds", help="the prepared synthetic dataset")
  p.add_argument("--steps", type=int, default=None, help="total_steps when training (default: the recipe's)")
  p.add_argument("--eval-images", type=int, default=200, help="held-out test scenes to score (as the demo)")
  p.add_argument("--out", default=str(EMBEDDED[NAME]), help="where to write the asset")
  args = p.parse_args()
  workdir, data_dir, out = Path(args.workdir), Path(args.data_dir).expanduser(), Path(args.out)

  t0 = time.perf_counter()
  if not (workdir / "checkpoints").is_dir():
    print(f"training the demo recipe in {workdir} ...")
    train_demo(workdir, data_dir, args.steps)
  model = load_model(workdir)
  opts = EvalOptions(data_dir=str(data_dir), limit=args.eval_images)
  numbers = json.loads(json.dumps(run_protocol(model, TASK, opts)[0], default=plain))
  report = {
    "task": TASK,
    "checkpoint": NAME,
    "options": {"dataset": "synthetic", "split": "test", "limit": args.eval_images},
    "results": numbers,
  }
  print(f"IoU_FG at 0.5 on {numbers['images']} held-out scenes: {100 * numbers['iou_fg']['fixed']['0.5']:.1f}%")

  if out.exists():
    shutil.rmtree(out)
  notes = [
    "The offline default of `clipseg-jax segment` and `serve`: the decoder trained by the demo's recipe "
    "(`clipseg-jax demo`, config `synthetic`) on the package's small CLIP (`embedded:synthetic-clip`), for the "
    "built-in synthetic scenes (coloured circles, squares, triangles... named by colour, shape and position). "
    "It knows nothing of real photographs: use a released CLIPSeg (`CIDAS/clipseg-rd64-refined`) for those.",
    f"Reproduce: `python experiments/scripts/make_embedded.py --workdir WORKDIR` (trains the recipe in an empty "
    f"WORKDIR first; this one is the {model.manifest.provenance['training']['steps']}-step run of "
    "`clipseg-jax demo`).",
  ]
  export_decoder(model, out, clip=CLIP, evaluation=report, name=NAME, license="mit", notes=notes)

  back = load_model(NAME) if out == EMBEDDED[NAME] else None
  if back is not None:  # the asset loads and holds exactly the trained weights
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), back.params, model.params)
    assert all(jax.tree.leaves(same)) and back.image_size == model.image_size
  size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
  shown = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
  print(f"wrote {shown} ({size / 1e6:.2f} MB) in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
  main()
