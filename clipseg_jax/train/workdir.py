"""A training run's directory as a model: its CLIP source plus the latest trained decoder.

Layout (written by the trainer): `config.json` (the run's config), `model/config.json` (the
ClipSegConfig), `model/base.json` (the CLIP source and its fingerprint), `model/` tokenizer files,
`checkpoints/` (Orbax)."""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp

from clipseg_jax.api import ClipSeg
from clipseg_jax.config import ClipSegConfig
from clipseg_jax.tokenizer import load_tokenizer
from clipseg_jax.train.checkpoints import Checkpointer
from clipseg_jax.train.model import check_fingerprint, clip_params
from clipseg_jax.train.step import fold_activation_scale
from clipseg_jax.weights import hf


def is_workdir(path: Path) -> bool:
  return path.is_dir() and (path / "checkpoints").is_dir() and (path / "model" / "base.json").exists()


def load_workdir(path: Path, dtype=jnp.float32) -> ClipSeg:
  """The latest checkpoint of the run in `path` as a ClipSeg."""
  config = ClipSegConfig.from_json(path / "model" / "config.json")
  base = json.loads((path / "model" / "base.json").read_text())
  ckpt = Checkpointer(path / "checkpoints")
  try:
    if ckpt.latest_step() is None:
      raise FileNotFoundError(f"{path} holds no checkpoint yet")
    decoder = ckpt.restore_params({"decoder": hf.param_template(config)["decoder"]})
  finally:
    ckpt.close()
  run = json.loads((path / "config.json").read_text())
  decoder = fold_activation_scale(decoder, run["model"].get("activation_scale", 1.0))
  clip = clip_params(config, base["clip"])
  check_fingerprint(path, base, clip)
  return ClipSeg(
    config,
    {"clip": clip, **decoder},
    load_tokenizer(path / "model"),
    dtype,
    image_size=run["data"]["pcplus"]["image_size"],
  )
