"""The CLIP a decoder runs on: reading it from any source, and the checks that a decoder fits it.

A decoder reads its CLIP's activations (its `reduces`: the vision width) and embeddings (FiLM: the
projection dim), and is only meaningful on the exact weights it was trained on: `check_backbone`
compares the towers' shapes, `check_fingerprint` the weights (`io.fingerprint` of `params["clip"]`).
Training, workdir loading, decoder-only directories and original decoder files all use these."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import jax

from clipseg_jax.config import ClipSegConfig
from clipseg_jax.weights import hf, io

RANDOM = "random:"  # "random:SOURCE": SOURCE's architecture with random weights (the paper's ablation)
CLIP_PREFIX = "clip."  # CLIP's keys in a CLIPSeg state dict (HF layout)
RANDOM_CLIP_SEED = 1  # the random CLIP of a "random:" source


def resolve_clip(source: str) -> Path:
  """A local directory for a CLIP source: an embedded name, a path, or a hub id."""
  source = source.removeprefix(RANDOM)
  if source in io.EMBEDDED:
    path = io.EMBEDDED[source]
    if not (path / "config.json").exists():
      raise FileNotFoundError(
        f"the embedded CLIP {source!r} is missing from {path}; it is made by `clipseg-jax pretrain-clip` (see README)"
      )
    return path
  return io.resolve(source)


def clip_state(state: dict) -> dict:
  """The CLIP tensors of a state dict, `clip.`-prefixed: an HF CLIP (`openai/clip-vit-base-patch16`
  layout, no prefix) or a CLIPSeg checkpoint (its `clip.*` keys; the decoder's are dropped)."""
  if not any(k.startswith(CLIP_PREFIX) for k in state):
    state = {f"{CLIP_PREFIX}{k}": v for k, v in state.items()}
  return {k: v for k, v in state.items() if k.startswith(CLIP_PREFIX)}


def clip_params(config: ClipSegConfig, source: str) -> dict:
  """The `clip` subtree of the params for `config`, loaded from `source` (CLIP or CLIPSeg layout;
  "random:SOURCE": random weights of that architecture)."""
  if source.startswith(RANDOM):
    from clipseg_jax.models.clipseg import init_params

    return jax.jit(lambda key: init_params(config, key)["clip"])(jax.random.PRNGKey(RANDOM_CLIP_SEED))
  path = resolve_clip(source)
  template = {"clip": hf.param_template(config)["clip"]}
  return hf.from_hf(clip_state(io.read_state(path)), template, source=str(path))["clip"]


def model_config_of(clip_source: str) -> ClipSegConfig | None:
  """The towers a CLIP source describes now (decoder fields at their defaults), or None for a source
  whose config cannot be read here (then the weights' shapes are checked as they load)."""
  try:
    raw = json.loads((resolve_clip(clip_source) / "config.json").read_text())
  except (OSError, ValueError):
    return None
  return towers_of(raw)


def towers_of(raw: dict) -> ClipSegConfig | None:
  """The towers of an HF CLIP or CLIPSeg `config.json` dict, or None for another model type."""
  if raw.get("model_type") == "clipseg":
    return ClipSegConfig.from_dict(raw)
  return ClipSegConfig.from_clip_dict(raw, extract_layers=(0,)) if raw.get("model_type") == "clip" else None


def backbone_facts(config: ClipSegConfig) -> dict[str, int]:
  """What a decoder's shapes depend on in its CLIP (its vision tower's width, depth and patch size)."""
  v = config.vision_config
  return {
    "width": v.hidden_size,
    "depth": v.num_hidden_layers,
    "patch": v.patch_size,
    "projection": config.projection_dim,
  }


def check_backbone(trained: dict[str, int], clip_config: ClipSegConfig, what: str, clip: str):
  """A decoder trained on one CLIP cannot read another's activations: one line naming both. `trained`:
  what is known of the CLIP the decoder was trained on (`backbone_facts`, or the part of it a decoder
  file's shapes show)."""
  theirs = backbone_facts(clip_config)
  if any(theirs[k] != v for k, v in trained.items()):
    describe = lambda facts: ", ".join(f"{k} {v}" for k, v in facts.items())
    raise ValueError(
      f"{what} was trained on a CLIP of vision {describe(trained)}, but the CLIP {clip!r} has "
      f"{describe({k: theirs[k] for k in trained})}: pass the CLIP it was trained on"
    )


def check_fingerprint(
  what, clip: str, want: str | None, clip_tree, *, strict: bool = True, remedy: str = "", digest=None
):
  """A decoder recorded the fingerprint (`want`) of the CLIP it was trained on; refuse (`strict`) or warn
  when `clip_tree`, the weights `clip` gives now, differ. Nothing is hashed when nothing was recorded;
  `digest`: the tree's fingerprint, already computed."""
  if not want or (digest or io.fingerprint(clip_tree)) == want:
    return
  message = (
    f"{what} was trained on other weights of the CLIP {clip!r} than it loads now (fingerprints differ): "
    f"{remedy or 'its masks would be wrong'}"
  )
  if strict:
    raise ValueError(message)
  warnings.warn(message, stacklevel=3)
