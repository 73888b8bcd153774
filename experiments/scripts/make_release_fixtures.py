"""Write the old-format fixtures (tests/fixtures/release_*) with a given checkout's code: a tiny random-weight
model in every format that release writes, and the logits that release predicts for a fixed input.

  git archive RELEASE | tar -x -C /tmp/release
  .venv/bin/python experiments/scripts/make_release_fixtures.py --checkout /tmp/release \
    --out tests/fixtures/release_2026_12

The checkout's package is imported (not the installed one); run in a fresh process. Formats:
`clip/` (the random model's CLIP towers in HF CLIP layout: the CLIP the others name, by the relative
path "clip"), `hf/` (export_hf of the random model), `workdir/` (a 2-step training run on that CLIP,
visual prompts in mode blur_highlight; its dataset and logs left out), `flax/` (save of the workdir's
model), `original/tiny.pth` + `.json` (export_original of it), `logits.npz` (per format, the logits
[prompts, S, S] of `image(S)` for `PROMPTS` at the model's input size S). Paths inside are relative:
load the fixtures with the fixture folder as the working directory. Tokenizer files are removed after
writing (they are OpenAI CLIP's, ~3.5 MB a copy; loading falls back to the same tokenizer)."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PROMPTS = ("a red circle", "the blue square")
INPUT_SIZE = 48  # the model's input size: neither the CLIP's native 32 nor the released 352
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json")


def image(size: int):
  """The query: a deterministic uint8 size x size x 3 pattern."""
  import numpy as np

  y, x = np.mgrid[:size, :size]
  return np.stack([(7 * x + 3 * y) % 256, (5 * x * y) % 256, (11 * y + x * x) % 256], -1).astype(np.uint8)


def logits_of(model):
  import numpy as np

  out = next(model.predict_iter([image(model.image_size)], model.encode_prompts(list(PROMPTS))))
  return np.asarray(out["logits"], np.float32)


def write_clip(config, params, out: Path):
  """The CLIP towers of `params` as an HF `CLIPModel` directory (config.json + model.safetensors)."""
  import json

  import jax

  from clipseg_jax.weights import hf, io

  out.mkdir()
  state = {k.removeprefix("clip."): v for k, v in hf.to_hf(jax.device_get(params)).items() if k.startswith("clip.")}
  io.write_safetensors(state, out / "model.safetensors")
  d = config.to_dict()
  clip = {"model_type": "clip", "projection_dim": d["projection_dim"], "logit_scale_init_value": 2.6592}
  clip["text_config"] = {k: v for k, v in d["text_config"].items() if k != "model_type"}
  clip["vision_config"] = {k: v for k, v in d["vision_config"].items() if k != "model_type"}
  (out / "config.json").write_text(json.dumps(clip, indent=2, sort_keys=True) + "\n")


def write(out: Path):
  """Runs inside the checkout's package (see `main`); `out` is the working directory."""
  import jax
  import numpy as np

  import clipseg_jax
  from clipseg_jax import ClipSeg, load_model
  from clipseg_jax.config import ClipSegConfig, TextConfig, VisionConfig
  from clipseg_jax.input_pipeline import build
  from clipseg_jax.models.clipseg import init_params
  from clipseg_jax.train.configs import load_config
  from clipseg_jax.train.trainer import train

  print("writing with", clipseg_jax.__file__)
  # Text width 3: its token embedding (49,408 x width) is most of each copy's bytes; at width 2 the final
  # LayerNorm leaves two possible embeddings (the two prompts gave logits 4e-7 apart, at 3 0.004).
  text = TextConfig(hidden_size=3, intermediate_size=6, num_hidden_layers=1, num_attention_heads=1)
  vision = VisionConfig(
    hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2, image_size=32, patch_size=16
  )
  config = ClipSegConfig(
    text_config=text,
    vision_config=vision,
    projection_dim=8,
    extract_layers=(1, 2),
    reduce_dim=8,
    decoder_num_attention_heads=2,
    decoder_intermediate_size=16,
    use_complex_transposed_convolution=True,
  )
  params = jax.jit(lambda key: init_params(config, key))(jax.random.PRNGKey(0))
  ClipSeg(config, params, image_size=INPUT_SIZE).export_hf("hf")
  write_clip(config, params, Path("clip"))
  with tempfile.TemporaryDirectory() as data:
    build("synthetic/tiny", data_dir=data)
    overrides = {
      "model.clip": "clip",
      "model.extract_layers": "(1, 2)",
      "model.reduce_dim": 8,
      "model.decoder_num_attention_heads": 2,
      "model.decoder_intermediate_size": 16,
      "data.name": "synthetic/tiny",
      "data.data_dir": data,
      "data.pcplus.image_size": INPUT_SIZE,
      "data.pcplus.visual_prompts": True,
      "data.pcplus.prompt_mode": "blur_highlight",
      "batch_size": 8,
      "total_steps": 2,
      "checkpoint_every": 2,
      "log_every": 1,
      "eval_every": 0,
    }
    train(load_config("synthetic", [f"--config.{k}={v}" for k, v in overrides.items()]), "workdir", show_progress=False)
  shutil.rmtree("workdir/tb", ignore_errors=True)  # TensorBoard events: not part of the model
  model = load_model("workdir")
  model.save("flax")
  model.export_original("original/tiny.pth")
  logits = {}
  for name, source in (("hf", "hf"), ("workdir", "workdir"), ("flax", "flax"), ("original", "original/tiny.pth")):
    logits[name] = logits_of(load_model(source))
  np.savez("logits.npz", **logits, image_size=np.int32(INPUT_SIZE), prompts=np.array(PROMPTS), query=image(INPUT_SIZE))
  for f in out.rglob("*"):
    if f.name in TOKENIZER_FILES:
      f.unlink()


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--checkout", required=True, help="a source tree of the release (git archive REF | tar -x)")
  parser.add_argument("--out", required=True, help="the fixture folder to (re)write")
  parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  out = Path(args.out).absolute()
  if args.inside:
    os.chdir(out)
    write(out)
    return
  checkout = Path(args.checkout).absolute()
  if not (checkout / "clipseg_jax" / "__init__.py").is_file():
    sys.exit(f"{checkout} holds no clipseg_jax package")
  if out.exists():
    shutil.rmtree(out)
  out.mkdir(parents=True)
  env = {**os.environ, "PYTHONPATH": str(checkout), "HF_HUB_OFFLINE": "1"}
  # A fresh process with the checkout first on sys.path: its package, not the installed one.
  cmd = [sys.executable, str(Path(__file__).absolute()), "--checkout", str(checkout), "--out", str(out), "--inside"]
  subprocess.run(cmd, env=env, cwd=checkout, check=True)
  (out / "README.txt").write_text(README.format(checkout=checkout.name))


README = """Old-format fixtures: a tiny random-weight model in every format the release of December 2026
(commit 6bc416a) wrote, and the logits that release predicted for one fixed query and two text prompts
(logits.npz: per format, [prompts, 48, 48]; also the query image and the prompts). tests/test_manifest.py
loads each with the current code and compares.

Written by experiments/scripts/make_release_fixtures.py from that release's source tree:
  git archive 6bc416a | tar -x -C /tmp/release
  .venv/bin/python experiments/scripts/make_release_fixtures.py --checkout /tmp/release \\
    --out tests/fixtures/release_2026_12
(the script's docstring lists the formats). Paths inside are relative: load with this folder as the working
directory. The tokenizer files each export wrote were removed (OpenAI CLIP's, 3.5 MB a copy); loading falls
back to the same tokenizer.
"""


if __name__ == "__main__":
  main()
