"""The model a training recipe describes: its config (CLIP towers from the CLIP source, decoder from the
recipe), its initial params, and the checks on a recipe against its CLIP (image size, what the freeze
rules train). Reading CLIPs and the backbone checks themselves live in `clipseg_jax.weights.backbone`."""

from __future__ import annotations

import dataclasses
import json
import re

from clipseg_jax.config import ClipSegConfig
from clipseg_jax.train import freeze
from clipseg_jax.weights import hf
from clipseg_jax.weights.backbone import clip_params, resolve_clip
from clipseg_jax.weights.manifest import Manifest
from clipseg_jax.weights.workdir import initial_decoder

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


def initial_params(config: ClipSegConfig, clip_source: str, seed: int) -> dict:
  return {"clip": clip_params(config, clip_source), "decoder": initial_decoder(config, seed)}


def recipe_manifest(cfg, config: ClipSegConfig, base: dict | None = None) -> Manifest:
  """The manifest of the model a recipe trains: its input size, visual prompt mode and prompt kinds, and
  (with `base`, the run's `model/base.json`) its CLIP, that CLIP's fingerprint and whether it is fine-tuned."""
  pcplus, base = cfg.data.pcplus, base or {}
  return Manifest(
    architecture=config,
    image_size=int(pcplus.image_size),
    prompt_mode=str(pcplus.prompt_mode),
    trained_prompts=["text", "visual"] if pcplus.visual_prompts else ["text"],
    withhold_prompt=bool(cfg.model.withhold_prompt),
    clip=base.get("clip", cfg.model.clip),
    clip_sha256=base.get("clip_sha256"),
    clip_finetuned=bool(base.get("clip_trained")),
  )
