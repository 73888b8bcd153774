"""`load_model`: the front door for every source a user has, training workdirs included. It reads them
all through `clipseg_jax.pretrained` and imports no training code (`clipseg_jax.train`)."""

from __future__ import annotations

import os
from pathlib import Path

import jax.numpy as jnp

from clipseg_jax.api import ClipSeg
from clipseg_jax.pretrained import load_pretrained
from clipseg_jax.weights import workdir


def load_model(
  source: str | os.PathLike,
  *,
  clip=None,
  dtype=jnp.float32,
  extract_layers=None,
  revision: str | None = None,
  token: str | None = None,
  cache_dir: str | os.PathLike | None = None,
) -> ClipSeg:
  """A ClipSeg from a hub id, an HF-format directory, a checkpoint saved by this project, a training
  workdir (its latest checkpoint), an embedded model (`"embedded:synthetic"`: the demo's decoder on the
  package's small CLIP, offline), or an original decoder file (`rd64-uni.pth`, ...) together with
  `clip=` (an HF CLIP hub id or directory). revision (branch, tag or commit), token and cache_dir are
  passed to huggingface_hub for hub ids (`source` and `clip=`)."""
  return load_pretrained(
    source,
    clip=clip,
    dtype=dtype,
    extract_layers=extract_layers,
    revision=revision,
    token=token,
    cache_dir=cache_dir,
  )


def workdir_provenance(path: Path) -> dict:
  """What a training workdir says about its model: the CLIP (source, fingerprint) and the recipe it was
  trained with (dataset, steps, batch, optimiser, ...), as model cards show it."""
  base = workdir.read_json(Path(path) / workdir.MODEL_DIR / workdir.BASE)
  run = workdir.read_json(Path(path) / workdir.RUN_CONFIG)
  training = workdir.training_facts(Path(path), run)
  return {"clip": base.get("clip"), "clip_sha256": base.get("clip_sha256"), "training": training}
