"""Reading a model: a hub id, an HF-format directory, this project's Flax checkpoint, or an original
decoder file (`rd64-uni.pth`, ...) with the HF CLIP it was trained on. Training workdirs are read by
`clipseg_jax.train.workdir`; `clipseg_jax.load_model` takes all of them."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jax.numpy as jnp

from clipseg_jax.api import ClipSeg
from clipseg_jax.config import ClipSegConfig
from clipseg_jax.export import FLAX_MARKER
from clipseg_jax.tokenizer import load_tokenizer
from clipseg_jax.weights import hf, io, original


def load_pretrained(source: str | os.PathLike, *, clip=None, dtype=jnp.float32, extract_layers=None) -> ClipSeg:
  """A ClipSeg from a hub id, a local HF directory, a Flax checkpoint, or an original decoder file with
  `clip=` (an HF CLIP hub id or directory)."""
  path = io.resolve(source)
  if path.is_file():
    if clip is None:
      raise ValueError(
        f"{path.name} looks like an original CLIPSeg decoder file; pass clip= with an HF "
        "CLIP checkpoint (e.g. clip='openai/clip-vit-base-patch16')"
      )
    return load_original(path, clip, dtype, extract_layers)
  if (path / FLAX_MARKER).exists():
    return load_flax(path, dtype)
  return load_hf(path, dtype, extract_layers)


def read_config(config_path: Path, expect: str = "clipseg") -> dict:
  if not config_path.exists():
    raise FileNotFoundError(
      f"{config_path.parent} has no config.json: not an HF model directory, a "
      "clipseg-jax checkpoint or a training workdir"
    )
  try:
    raw = json.loads(config_path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{config_path} is not valid JSON: {e}") from None
  if not isinstance(raw, dict) or raw.get("model_type") != expect:
    kind = raw.get("model_type") if isinstance(raw, dict) else type(raw).__name__
    hint = "; pass it as clip= with a decoder file" if kind == "clip" and expect == "clipseg" else ""
    raise ValueError(f"{config_path} describes a {kind!r} model, not {expect!r}{hint}")
  return raw


def config_from(what: str, make, *args, **kwargs):
  """`make(*args, **kwargs)` (a config constructor), its type and value errors (a `config.json` with a
  string, list, null or 0 where a size belongs) re-raised as one ValueError that starts with `what`."""
  try:
    return make(*args, **kwargs)
  except (ValueError, TypeError, AttributeError, KeyError) as e:
    raise ValueError(f"{what}: {e}") from e


def load_hf(path: Path, dtype=jnp.float32, extract_layers=None) -> ClipSeg:
  config_path = path / "config.json"
  config = config_from(
    f"{config_path} is not a valid CLIPSeg config", ClipSegConfig.from_dict, read_config(config_path)
  )
  if extract_layers is not None:
    config = dataclasses.replace(config, extract_layers=tuple(extract_layers))
  params = hf.from_hf(io.read_state(path), hf.param_template(config), source=str(path))
  return ClipSeg(config, params, load_tokenizer(path), dtype)


def load_flax(path: Path, dtype=jnp.float32) -> ClipSeg:
  import orbax.checkpoint as ocp

  config_path = path / "config.json"
  config = config_from(
    f"{config_path} is not a valid CLIPSeg config", ClipSegConfig.from_dict, read_config(config_path)
  )
  with ocp.StandardCheckpointer() as ckpt:
    params = ckpt.restore(path.absolute() / "params", hf.param_template(config))
  return ClipSeg(config, params, load_tokenizer(path), dtype)


def load_original(path: Path, clip, dtype=jnp.float32, extract_layers=None) -> ClipSeg:
  clip_dir = io.resolve(clip)
  clip_config = read_config(clip_dir / "config.json", expect="clip")
  decoder_state = io.read_state(path)
  overrides = {} if extract_layers is None else {"extract_layers": tuple(extract_layers)}
  what = f"{clip_dir / 'config.json'} with the decoder {path} gives no valid config"
  config = config_from(what, original.decoder_config, clip_config, decoder_state, **overrides)
  decoder, extras = original.original_to_hf(decoder_state, source=str(path))
  state = {f"clip.{k}": v for k, v in io.read_state(clip_dir).items()}
  state.update(decoder)
  params = hf.from_hf(state, hf.param_template(config), source=f"{path} + {clip_dir}")
  return ClipSeg(config, params, load_tokenizer(clip_dir), dtype, original_extras=extras)
