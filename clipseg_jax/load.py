"""`load_model`: the front door for every source a user has, training workdirs included."""

from __future__ import annotations

import os
from pathlib import Path

import jax.numpy as jnp

from clipseg_jax.api import ClipSeg
from clipseg_jax.pretrained import load_pretrained


def load_model(source: str | os.PathLike, *, clip=None, dtype=jnp.float32, extract_layers=None) -> ClipSeg:
  """A ClipSeg from a hub id, an HF-format directory, a checkpoint saved by this project, a training
  workdir (its latest checkpoint), or an original decoder file (`rd64-uni.pth`, ...) together with
  `clip=` (an HF CLIP hub id or directory)."""
  local = Path(os.path.expanduser(str(source)))
  if local.is_dir():
    from clipseg_jax.train import workdir  # training code only for a workdir

    if workdir.is_workdir(local):
      return workdir.load_workdir(local, dtype)
  return load_pretrained(source, clip=clip, dtype=dtype, extract_layers=extract_layers)
