"""`load_model`: the front door for every source a user has, training workdirs included."""

from __future__ import annotations

import os
from pathlib import Path

import jax.numpy as jnp

from clipseg_jax.api import ClipSeg
from clipseg_jax.export import PROVENANCE
from clipseg_jax.pretrained import load_pretrained


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
  local = Path(os.path.expanduser(str(source)))
  if local.is_dir():
    from clipseg_jax.train import workdir  # training code only for a workdir

    if (local / "checkpoints").is_dir() and not (local / "model" / "base.json").is_file():
      raise FileNotFoundError(
        f"{local} looks like a training workdir (it has checkpoints/) but has no model/base.json, which names "
        "its CLIP: the run stopped before its setup finished, or the file was removed; rerun the training "
        "command on it to resume"
      )
    if workdir.is_workdir(local):
      model = workdir.load_workdir(local, dtype)
      model.config.extra[PROVENANCE] = workdir_provenance(local)
      return model
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
  trained with (dataset, steps, batch, optimiser, ...), for model cards (`export.PROVENANCE`)."""
  from clipseg_jax.train import workdir

  run = workdir.read_json(path / "config.json")
  base = workdir.read_json(path / "model" / "base.json")
  data, pcplus, optim = run.get("data", {}), run.get("data", {}).get("pcplus", {}), run.get("optim", {})
  steps = [int(p.name) for p in (path / "checkpoints").iterdir() if p.name.isdigit()]
  prompts = ["text"] + (["visual"] if pcplus.get("visual_prompts") else [])
  training = {
    "dataset": data.get("name"),
    "split": data.get("train_split"),
    "steps": max(steps, default=None),
    "total_steps": run.get("total_steps"),
    "batch_size": run.get("batch_size"),
    "image_size": pcplus.get("image_size"),
    "prompts": prompts,
    "templates": len(pcplus.get("templates", [])) or None,
    "negatives": pcplus.get("q_neg"),
    "optimizer": {k: optim.get(k) for k in ("learning_rate", "end_learning_rate", "warmup_steps", "weight_decay")},
    "seed": run.get("seed"),
  }
  return {"clip": base.get("clip"), "clip_sha256": base.get("clip_sha256"), "training": training}
