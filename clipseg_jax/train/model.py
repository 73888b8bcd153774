"""The model a training run starts from: CLIP from any source, a freshly initialised decoder."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import jax
import numpy as np

from clipseg_jax.config import ClipSegConfig
from clipseg_jax.models.clipseg import init_params
from clipseg_jax.weights import hf, io

ASSETS = Path(__file__).resolve().parent.parent / "assets"  # inside the installed package
EMBEDDED = {"embedded:synthetic-clip": ASSETS / "synthetic_clip"}

DECODER_FIELDS = (
  "extract_layers",
  "reduce_dim",
  "decoder_num_attention_heads",
  "decoder_intermediate_size",
  "conditional_layer",
  "use_complex_transposed_convolution",
  "use_decoder_blocks",
)


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
  fields = {k: model_cfg[k] for k in DECODER_FIELDS}
  fields["extract_layers"] = tuple(fields["extract_layers"])
  if raw.get("model_type") == "clipseg":  # towers of a CLIPSeg checkpoint
    base = ClipSegConfig.from_dict(raw)
    return dataclasses.replace(base, **fields)
  if raw.get("model_type") != "clip":
    raise ValueError(
      f"{model_cfg.clip}: expected an HF CLIP or CLIPSeg checkpoint, got model_type {raw.get('model_type')!r}"
    )
  return ClipSegConfig.from_clip_dict(raw, **fields)


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


def initial_params(config: ClipSegConfig, clip_source: str, seed: int) -> dict:
  decoder = jax.jit(lambda key: init_params(config, key)["decoder"])(jax.random.PRNGKey(seed))
  return {"clip": clip_params(config, clip_source), "decoder": decoder}


def fingerprint(tree) -> str:
  """sha256 of a param tree's values. A workdir records its CLIP's: a decoder is only meaningful on
  the exact backbone it was trained on, and a source such as the embedded CLIP can change under it."""
  h = hashlib.sha256()
  for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(jax.device_get(tree)), key=lambda x: str(x[0])):
    a = np.ascontiguousarray(leaf, np.float32)
    h.update(f"{jax.tree_util.keystr(path)}{a.shape}".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def check_fingerprint(workdir: Path, base: dict, clip_tree, digest: str | None = None):
  """Refuse a workdir whose decoder was trained on other CLIP weights than `base['clip']` gives now.
  The tree is hashed only when the workdir recorded a digest (or pass `digest`, already computed)."""
  want = base.get("clip_sha256")  # absent in workdirs written before it was recorded
  if want and (digest or fingerprint(clip_tree)) != want:
    raise ValueError(
      f"{workdir} was trained on other weights of the CLIP {base['clip']!r} than it holds now "
      "(its weights changed since); the decoder does not fit them: retrain in a new workdir"
    )
