"""Writing a model: an HF directory (transformers loads it), an original decoder `.pth`, or this
project's Flax checkpoint. Plain functions of a model's `config`, `params` and `tokenizer`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax

from clipseg_jax.weights import hf, io, original

FLAX_MARKER = "clipseg_jax.json"  # written beside config.json + params/ by `save`


def save_tokenizer(tokenizer, out: Path):
  if tokenizer is not None:
    tokenizer.save_pretrained(str(out))


def export_hf(model, out_dir: str | os.PathLike) -> Path:
  """`config.json` + `model.safetensors` (+ tokenizer) loadable by
  `transformers.CLIPSegForImageSegmentation.from_pretrained(out_dir)`; weights bit-identical, with a
  sha256 digest in the safetensors header that `load_model` checks (`io.write_safetensors`)."""
  if not model.config.use_decoder_blocks:
    raise ValueError("transformers' CLIPSeg has no decoder without blocks (CLIP-Deconv); use save()")
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  io.write_safetensors(hf.to_hf(jax.device_get(model.params)), out / "model.safetensors")
  model.config.to_json(out / "config.json")
  save_tokenizer(model.tokenizer, out)
  return out


def export_original(model, path: str | os.PathLike) -> Path:
  """The decoder as a state dict in the original `.pth` layout (q/k/v fused), with a `<path>.sha256`
  sidecar that reading checks."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  state = hf.to_hf(jax.device_get(model.params))
  io.write_torch(original.hf_to_original(state, model.original_extras), path)
  return path


def save(model, out_dir: str | os.PathLike) -> Path:
  """This project's Flax checkpoint: `config.json` + Orbax `params/` (+ tokenizer)."""
  import orbax.checkpoint as ocp

  out = Path(out_dir).absolute()
  out.mkdir(parents=True, exist_ok=True)
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(out / "params", jax.device_get(model.params), force=True)
    ckpt.wait_until_finished()
  model.config.to_json(out / "config.json")
  save_tokenizer(model.tokenizer, out)
  (out / FLAX_MARKER).write_text(json.dumps({"format": "clipseg-jax params", "version": 1}) + "\n")
  return out
