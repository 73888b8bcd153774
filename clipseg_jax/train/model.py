"""The model a training run starts from: CLIP from any source, a freshly initialised decoder."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import jax

from clipseg_jax.config import ClipSegConfig
from clipseg_jax.models.clipseg import init_params
from clipseg_jax.train import freeze
from clipseg_jax.weights import hf, io

# The embedded models and the CLIP fingerprint live in clipseg_jax.weights.io (loading and export use them too).
ASSETS, EMBEDDED, fingerprint = io.ASSETS, io.EMBEDDED, io.fingerprint

DECODER_FIELDS = (
  "extract_layers",
  "reduce_dim",
  "decoder_num_attention_heads",
  "decoder_intermediate_size",
  "conditional_layer",
  "use_complex_transposed_convolution",
  "use_decoder_blocks",
  "transposed_convolution_kernels",
  "reduce2_dim",
)
OPTIONAL_FIELDS = {"reduce2_dim": None}  # keys that configs written before them may lack


RANDOM = "random:"  # "random:SOURCE": SOURCE's architecture with random weights (the paper's ablation)


def resolve_clip(source: str) -> Path:
  """A local directory for a CLIP source: an embedded name, a path, or a hub id."""
  source = source.removeprefix(RANDOM)
  if source in EMBEDDED:
    path = EMBEDDED[source]
    if not (path / "config.json").exists():
      raise FileNotFoundError(
        f"the embedded CLIP {source!r} is missing from {path}; it is made by `clipseg-jax pretrain-clip` (see README)"
      )
    return path
  return io.resolve(source)


def model_config(model_cfg) -> ClipSegConfig:
  """ClipSegConfig: towers from the CLIP source's config.json, decoder from the training config."""
  clip_dir = resolve_clip(model_cfg.clip)
  raw = json.loads((clip_dir / "config.json").read_text())
  fields = {
    k: model_cfg.get(k, OPTIONAL_FIELDS.get(k)) if k in OPTIONAL_FIELDS else model_cfg[k] for k in DECODER_FIELDS
  }
  fields["extract_layers"] = tuple(fields["extract_layers"])
  fields["transposed_convolution_kernels"] = tuple(fields["transposed_convolution_kernels"]) or None  # (): HF's
  if raw.get("model_type") == "clipseg":  # towers of a CLIPSeg checkpoint
    base = ClipSegConfig.from_dict(raw)
    return dataclasses.replace(base, **fields)
  if raw.get("model_type") != "clip":
    raise ValueError(
      f"{model_cfg.clip}: expected an HF CLIP or CLIPSeg checkpoint, got model_type {raw.get('model_type')!r}"
    )
  return ClipSegConfig.from_clip_dict(raw, **fields)


def trains_clip(cfg) -> bool:
  """Whether a training config's freeze rules leave any CLIP parameter trainable (read off the shapes)."""
  rules = freeze.rules_of(cfg.optim)
  if rules == freeze.DEFAULT_RULES:
    return False
  template = hf.param_template(model_config(cfg.model))
  return freeze.trains_clip(freeze.split(template, freeze.labels(template, rules))[0])


def unreached(trainable: dict, config: ClipSegConfig, visual_prompts: bool) -> list[str]:
  """Trainable CLIP paths the loss never reads: without visual prompts the vision tower runs only up to
  the deepest extracted block, and its pooled output and projection are unused (AdamW's weight decay
  would still move them)."""
  if visual_prompts or "vision_model" not in trainable.get("clip", {}):
    return []
  late = re.compile(r"clip/vision_model/encoder/layers_(\d+)/.*")
  out = []
  for path in freeze.paths({"clip": trainable["clip"]}):
    m = late.fullmatch(path)
    pooled = path.startswith(("clip/vision_model/post_layernorm", "clip/visual_"))
    if pooled or (m and int(m[1]) >= config.vision_depth):
      out.append(path)
  return out


def check_image_size(config: ClipSegConfig, image_size: int, clip: str):
  """The training image size must tile into whole patches (352 fits patch 16 and 32, not 14: use 336 or 364)."""
  p = config.vision_config.patch_size
  if image_size % p:
    below, above = image_size // p * p, (image_size // p + 1) * p
    raise ValueError(
      f"data.pcplus.image_size {image_size} is not a multiple of the patch size {p} of the CLIP {clip!r}; "
      f"use {below} or {above}"
    )


def check_backbone(config: ClipSegConfig, clip_config: ClipSegConfig, what: str, clip: str):
  """A decoder trained on one CLIP cannot read another's activations: one line naming both."""
  mine, theirs = config.vision_config, clip_config.vision_config
  got = (mine.hidden_size, mine.num_hidden_layers, mine.patch_size, config.projection_dim)
  want = (theirs.hidden_size, theirs.num_hidden_layers, theirs.patch_size, clip_config.projection_dim)
  if got != want:
    raise ValueError(
      f"{what} was trained on a CLIP of vision width {got[0]}, depth {got[1]}, patch {got[2]}, projection "
      f"{got[3]}, but {clip!r} has width {want[0]}, depth {want[1]}, patch {want[2]}, projection {want[3]}"
    )


def clip_params(config: ClipSegConfig, source: str) -> dict:
  """The `clip` subtree of the params, loaded from `source` (CLIP or CLIPSeg layout)."""
  if source.startswith(RANDOM):
    return jax.jit(lambda key: init_params(config, key)["clip"])(jax.random.PRNGKey(1))
  path = resolve_clip(source)
  state = io.read_state(path)
  if not any(k.startswith("clip.") for k in state):
    state = {f"clip.{k}": v for k, v in state.items()}
  state = {k: v for k, v in state.items() if k.startswith("clip.")}
  template = {"clip": hf.param_template(config)["clip"]}
  return hf.from_hf(state, template, source=str(path))["clip"]


def initial_decoder(config: ClipSegConfig, seed: int) -> dict:
  return jax.jit(lambda key: init_params(config, key)["decoder"])(jax.random.PRNGKey(seed))


def initial_params(config: ClipSegConfig, clip_source: str, seed: int) -> dict:
  return {"clip": clip_params(config, clip_source), "decoder": initial_decoder(config, seed)}


def model_config_of(clip_source: str) -> ClipSegConfig | None:
  """The towers a CLIP source describes now (decoder fields at their defaults), or None for a source
  whose config cannot be read here (then the weights' shapes are checked as they load)."""
  try:
    raw = json.loads((resolve_clip(clip_source) / "config.json").read_text())
  except (OSError, ValueError):
    return None
  if raw.get("model_type") == "clipseg":
    return ClipSegConfig.from_dict(raw)
  return ClipSegConfig.from_clip_dict(raw, extract_layers=(0,)) if raw.get("model_type") == "clip" else None


def check_fingerprint(workdir: Path, base: dict, clip_tree, digest: str | None = None):
  """Refuse a workdir whose decoder was trained on other CLIP weights than `base['clip']` gives now.
  The tree is hashed only when the workdir recorded a digest (or pass `digest`, already computed)."""
  want = base.get("clip_sha256")  # absent in workdirs written before it was recorded
  if want and (digest or fingerprint(clip_tree)) != want:
    raise ValueError(
      f"{workdir} was trained on other weights of the CLIP {base['clip']!r} than it holds now "
      "(its weights changed since); the decoder does not fit them: retrain in a new workdir"
    )
