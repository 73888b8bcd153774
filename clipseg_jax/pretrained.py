"""Reading a model, every format: a hub id, an HF-format directory, this project's Flax checkpoint, a
decoder-only directory with the CLIP it names (the embedded `embedded:synthetic`), a training workdir
(its latest checkpoint; read without training code), or an original decoder file (`rd64-uni.pth`, ...)
with the HF CLIP it was trained on. `clipseg_jax.load_model` is the front door.

Each model comes with its manifest (`weights.manifest`): read from the format's manifest, or for models
written before manifests, derived from where those kept its facts."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp

from clipseg_jax import preprocess
from clipseg_jax.api import ClipSeg
from clipseg_jax.config import ClipSegConfig
from clipseg_jax.export import (
  DECODER_MARKER,
  DECODER_WEIGHTS,
  FLAX_DIGEST_KEY,
  FLAX_MARKER,
  PREPROCESSOR_CONFIG,
  SIDECAR_MANIFEST,
  original_sidecar,
)
from clipseg_jax.tokenizer import has_tokenizer, load_tokenizer
from clipseg_jax.weights import backbone, hf, io, manifest, original, workdir
from clipseg_jax.weights.checkpoints import one_line

ORIGINAL_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")  # what an original decoder file is called
WRONG_MASKS = "its masks will be wrong"


def load_pretrained(
  source: str | os.PathLike,
  *,
  clip=None,
  dtype=jnp.float32,
  extract_layers=None,
  revision: str | None = None,
  token: str | None = None,
  cache_dir: str | os.PathLike | None = None,
) -> ClipSeg:
  """A ClipSeg from a hub id, a local HF directory, a Flax checkpoint, a decoder-only directory, a training
  workdir (its latest checkpoint that restores), or an original decoder file with `clip=` (an HF CLIP hub
  id or directory; optional when the file's `<file>.json` sidecar names it). revision/token/cache_dir go
  to huggingface_hub for hub ids, `clip=`'s too."""
  hub = {"revision": revision, "token": token, "cache_dir": cache_dir}
  local = Path(os.path.expanduser(str(source)))
  if local.is_dir():
    workdir.check_started(local)
    if workdir.is_workdir(local):
      return load_workdir(local, dtype)
  path = io.resolve(source, **hub)
  if path.is_file():
    if path.suffix not in ORIGINAL_SUFFIXES and not original_sidecar(path).is_file():
      raise ValueError(
        f"{path} is a file, not a model: load_model takes a directory (HF export, clipseg-jax checkpoint, "
        f"training workdir), a hub id, or an original decoder file ({', '.join(ORIGINAL_SUFFIXES)}) with clip="
      )
    model = load_original(path, clip, dtype, extract_layers, hub=hub)
  elif (path / DECODER_MARKER).exists():
    model = load_decoder(path, dtype, extract_layers, hub=hub)
  elif (path / FLAX_MARKER).exists():
    model = load_flax(path, dtype)
  else:
    model = load_hf(path, dtype, extract_layers)
  s = str(source)
  if io.is_hub_id(s) and not s.startswith(io.EMBEDDED_PREFIX):  # fetched from the Hub: what it derives from
    model.manifest = model.manifest.replace(provenance={**model.manifest.provenance, "base_model": s})
  return model


def load_workdir(path: Path, dtype=jnp.float32) -> ClipSeg:
  """The latest checkpoint of the training run in `path` that restores (`weights.workdir.read_model`)."""
  config, params, found = workdir.read_model(path)
  return ClipSeg(config, params, load_tokenizer(path / workdir.MODEL_DIR), dtype, manifest=found)


def read_manifest(path: Path, config: ClipSegConfig, **facts) -> manifest.Manifest:
  """The manifest of the model directory `path` (`manifest.read_or_derive`: derived, for a model written
  before manifests, from `facts` and `preprocessor_config.json`'s size), which must agree with that size."""
  found = manifest.read_or_derive(path, config, image_size=image_size(path, config=config), **facts)
  size = _image_size(path, None)  # None: no square size to compare
  if size is not None and found.image_size != size:
    raise ValueError(
      f"{path / PREPROCESSOR_CONFIG} resizes to {size} but {manifest.path_of(path)} records the input size "
      f"{found.image_size}: edit both (or write the model again with the size you want)"
    )
  return found


def image_size(path: Path, default: int = preprocess.IMAGE_SIZE, config: ClipSegConfig | None = None) -> int:
  """The square input size in `path/preprocessor_config.json` (what transformers' processor resizes to),
  else `default` (352, the released models' size); with `config`, one the model can take (a multiple of
  its patch size) or an error naming the file."""
  size = _image_size(path, default)
  patch = config.vision_config.patch_size if config is not None else 1
  if size % patch:
    raise ValueError(
      f"{path / PREPROCESSOR_CONFIG}: size {size} is not a multiple of the model's patch size {patch} "
      f"(the decoder reads a square grid of patches); fix 'size' (e.g. {max(patch, size // patch * patch)})"
    )
  return size


def _image_size(path: Path, default: int) -> int:
  config = path / PREPROCESSOR_CONFIG
  if not config.is_file():
    return default
  try:
    size = json.loads(config.read_text()).get("size")
  except (ValueError, AttributeError) as e:
    raise ValueError(f"{config} is not a valid preprocessor config: {e}") from None
  if isinstance(size, int):  # the older layout: one number
    size = {"height": size, "width": size}
  if not isinstance(size, dict):
    return default
  h, w = size.get("height"), size.get("width")
  if h != w or not isinstance(h, int) or h <= 0:
    return default  # e.g. {"shortest_edge": ...}: not the square resize the model expects
  return h


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
  found = read_manifest(path, config)
  if extract_layers is not None:
    config = dataclasses.replace(config, extract_layers=tuple(extract_layers))
  params = hf.from_hf(io.read_state(path), hf.param_template(config), source=str(path))
  return ClipSeg(config, params, load_tokenizer(path), dtype, manifest=found)


def load_flax(path: Path, dtype=jnp.float32) -> ClipSeg:
  import orbax.checkpoint as ocp

  config_path = path / "config.json"
  config = config_from(
    f"{config_path} is not a valid CLIPSeg config", ClipSegConfig.from_dict, read_config(config_path)
  )
  marker_path = path / FLAX_MARKER
  try:
    marker = json.loads(marker_path.read_text())
  except (ValueError, UnicodeDecodeError) as e:
    raise ValueError(f"{marker_path} is not valid JSON (a damaged clipseg-jax checkpoint?): {e}") from None
  want = marker.get(FLAX_DIGEST_KEY) if isinstance(marker, dict) else None
  io.quiet_orbax()  # a damaged file is the one error below, not pages of Orbax's threads' tracebacks
  try:
    with ocp.StandardCheckpointer() as ckpt:
      params = ckpt.restore(path.absolute() / "params", hf.param_template(config))
  except Exception as e:  # noqa: BLE001 - Orbax/TensorStore raise many types for damaged files
    raise ValueError(
      f"cannot read the params of {path} (params/ truncated or damaged, or not saved by clipseg-jax): {one_line(e)}"
    ) from None
  if want is None:  # saved before digests existed
    io.check_finite(dict(enumerate(jax.tree.leaves(params))), path / "params")
  elif io.fingerprint(params) != want:
    raise ValueError(
      f"{path} is corrupt: its params do not match the sha256 recorded when it was saved ({FLAX_DIGEST_KEY} in "
      f"{FLAX_MARKER}); save or download it again"
    )
  found = read_manifest(path, config)
  return ClipSeg(config, params, load_tokenizer(path), dtype, manifest=found)


def load_decoder(path: Path, dtype=jnp.float32, extract_layers=None, *, hub=None) -> ClipSeg:
  """A decoder-only directory (`export.export_decoder`) composed with the CLIP its marker names."""
  marker_path = path / DECODER_MARKER
  try:
    marker = json.loads(marker_path.read_text())
    clip = str(marker["clip"])
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{marker_path} is not a valid decoder marker (JSON naming its 'clip'): {e!r}") from None
  clip_dir = io.resolve(clip, **(hub or {}))
  config_path = path / "config.json"
  config = config_from(
    f"{config_path} is not a valid CLIPSeg config", ClipSegConfig.from_dict, read_config(config_path)
  )
  found = read_manifest(path, config, clip=clip, clip_sha256=marker.get("clip_sha256"))
  if extract_layers is not None:
    config = dataclasses.replace(config, extract_layers=tuple(extract_layers))
  state = {**backbone.clip_state(io.read_state(clip_dir)), **io.read_state(path / DECODER_WEIGHTS)}
  params = hf.from_hf(state, hf.param_template(config), source=f"{path} + {clip_dir}")
  backbone.check_fingerprint(path, clip, marker.get("clip_sha256"), params["clip"], remedy=WRONG_MASKS)
  tokenizer = load_tokenizer(path if has_tokenizer(path) else clip_dir)
  return ClipSeg(config, params, tokenizer, dtype, manifest=found)


def read_sidecar(path: Path) -> dict:
  """What `export.export_original` recorded beside a decoder file (the CLIP it needs), or {}."""
  side = original_sidecar(path)
  if not side.is_file():
    return {}
  try:
    raw = json.loads(side.read_text())
  except ValueError as e:
    raise ValueError(f"{side} (written with {path.name}) is not valid JSON: {e}") from None
  return raw if isinstance(raw, dict) else {}


def load_original(path: Path, clip, dtype=jnp.float32, extract_layers=None, *, hub=None) -> ClipSeg:
  side = read_sidecar(path)
  recorded = sidecar_manifest(path, side)
  clip = clip if clip is not None else side.get("clip")
  if clip is None:
    raise ValueError(
      f"{path.name} looks like an original CLIPSeg decoder file; pass clip= with an HF "
      "CLIP checkpoint (e.g. clip='openai/clip-vit-base-patch16')"
    )
  clip = str(clip)
  clip_dir = io.resolve(clip, **(hub or {}))
  clip_config = read_config(clip_dir / "config.json", expect="clip")
  decoder_state = io.read_state(path)
  towers = config_from(f"{clip_dir / 'config.json'} is not a valid CLIP config", backbone.towers_of, clip_config)
  backbone.check_backbone(original.backbone_of(decoder_state), towers, f"the decoder {path}", clip)
  if extract_layers is None and side.get("extract_layers") is not None:  # recorded by export_original
    extract_layers = side["extract_layers"]
    if not isinstance(extract_layers, list) or not all(isinstance(i, int) for i in extract_layers):
      raise ValueError(
        f"{original_sidecar(path)}: 'extract_layers' must be a list of layer indices, got {extract_layers!r}"
      )
  overrides = {} if extract_layers is None else {"extract_layers": tuple(extract_layers)}
  what = f"{clip_dir / 'config.json'} with the decoder {path} gives no valid config"
  config = config_from(what, original.decoder_config, clip_config, decoder_state, **overrides)
  decoder, extras = original.original_to_hf(decoder_state, source=str(path))
  state = {**backbone.clip_state(io.read_state(clip_dir)), **decoder}
  params = hf.from_hf(state, hf.param_template(config), source=f"{path} + {clip_dir}")
  # The paper's files name no CLIP: any CLIP of the right shape goes, with a warning where one was recorded.
  want = recorded.clip_sha256 if recorded else side.get("clip_sha256")
  backbone.check_fingerprint(path, clip, want, params["clip"], strict=False, remedy=WRONG_MASKS)
  size = side.get("image_size", preprocess.IMAGE_SIZE)
  found = recorded or manifest.derive(config, image_size=size, clip=clip, clip_sha256=side.get("clip_sha256"))
  found = found.replace(architecture=config, clip=clip)
  return ClipSeg(config, params, load_tokenizer(clip_dir), dtype, original_extras=extras, manifest=found)


def sidecar_manifest(path: Path, side: dict) -> manifest.Manifest | None:
  """The manifest an original file's sidecar holds (`export.SIDECAR_MANIFEST`), or None (older sidecars)."""
  if side.get(SIDECAR_MANIFEST) is None:
    return None
  return manifest.Manifest.from_dict(side[SIDECAR_MANIFEST], f"{original_sidecar(path)} ({SIDECAR_MANIFEST!r})")
