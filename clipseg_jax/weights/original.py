"""The original CLIPSeg decoder files (`rd64-uni.pth`, `rd16-uni.pth`, `rd64-uni-refined.pth`).

They hold the decoder only, in `torch.nn.TransformerEncoderLayer` naming with q/k/v fused. The table
maps each original key to its HF `CLIPSegForImageSegmentation` key; CLIP comes from an HF CLIP
checkpoint (`openai/clip-vit-base-patch16` layout) with keys prefixed by `clip.`.
"""

from __future__ import annotations

import re

import numpy as np

from clipseg_jax.config import ClipSegConfig
from clipseg_jax.weights.errors import CheckpointMismatchError

# (original, HF) key templates; each {field} carries over.
TABLE = [
  ("film_{op}.{p}", "decoder.film_{op}.{p}"),
  ("reduces.{i}.{p}", "decoder.reduces.{i}.{p}"),
  ("blocks.{i}.self_attn.out_proj.{p}", "decoder.layers.{i}.self_attn.out_proj.{p}"),
  ("blocks.{i}.linear1.{p}", "decoder.layers.{i}.mlp.fc1.{p}"),
  ("blocks.{i}.linear2.{p}", "decoder.layers.{i}.mlp.fc2.{p}"),
  ("blocks.{i}.norm1.{p}", "decoder.layers.{i}.layer_norm1.{p}"),
  ("blocks.{i}.norm2.{p}", "decoder.layers.{i}.layer_norm2.{p}"),
  ("trans_conv.{p}", "decoder.transposed_convolution.{p}"),
  ("trans_conv.{i}.{p}", "decoder.transposed_convolution.{i}.{p}"),
]
# torch MultiheadAttention stacks q, k, v along the output dim of one projection.
FUSED = ("blocks.{i}.self_attn.in_proj_{p}", "decoder.layers.{i}.self_attn.{qkv}_proj.{p}")
# The original model defines a `reduce` layer it never uses; files may carry it. Kept for round trips.
UNUSED = re.compile(r"reduce\.(weight|bias)")

_FIELDS = {"i": r"\d+", "p": "weight|bias", "op": "mul|add", "qkv": "[qkv]"}


def _match(template: str, key: str) -> dict | None:
  pattern = re.sub(r"\\\{(\w+)\\\}", lambda m: f"(?P<{m[1]}>{_FIELDS[m[1]]})", re.escape(template))
  m = re.fullmatch(pattern, key)
  return m.groupdict() if m else None


def _rename(key: str, pairs) -> str | None:
  for src, dst in pairs:
    fields = _match(src, key)
    if fields is not None:
      return dst.format(**fields)
  return None


def original_to_hf(state: dict[str, np.ndarray], source: str = "original checkpoint"):
  """-> (HF-keyed decoder state, unused tensors kept aside)."""
  out, extras, unknown = {}, {}, []
  for key, value in state.items():
    value = np.asarray(value)
    if UNUSED.fullmatch(key):
      extras[key] = value
    elif (fields := _match(FUSED[0], key)) is not None:
      for name, part in zip("qkv", np.split(value, 3, axis=0)):
        out[FUSED[1].format(qkv=name, **fields)] = part
    elif (hf := _rename(key, TABLE)) is not None:
      out[hf] = value
    else:
      unknown.append(key)
  if unknown:
    raise CheckpointMismatchError(source, unexpected=sorted(unknown))
  return out, extras


def hf_to_original(state: dict[str, np.ndarray], extras: dict | None = None) -> dict[str, np.ndarray]:
  """HF-keyed state (its `decoder.` part) -> original decoder state dict, q/k/v fused."""
  out = dict(extras or {})
  fused: dict[str, dict[str, np.ndarray]] = {}
  for key, value in state.items():
    if not key.startswith("decoder."):
      continue
    if (fields := _match(FUSED[1], key)) is not None:
      qkv = fields.pop("qkv")
      fused.setdefault(FUSED[0].format(**fields), {})[qkv] = value
    elif (orig := _rename(key, [(hf, orig) for orig, hf in TABLE])) is not None:
      out[orig] = value
    else:
      raise KeyError(f"no original-layout name for {key}")
  for key, parts in fused.items():
    out[key] = np.concatenate([parts[c] for c in "qkv"], axis=0)
  return out


def infer_decoder_fields(state: dict[str, np.ndarray]) -> dict:
  """Decoder config read off the original keys: reduce_dim, depth, FFN width, refined head."""
  try:
    reduce_dim, projection_dim = np.shape(state["film_mul.weight"])
  except KeyError:
    raise CheckpointMismatchError("original checkpoint", missing=["film_mul.weight"]) from None
  depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
  ffn = np.shape(state["blocks.0.linear1.weight"])[0] if "blocks.0.linear1.weight" in state else 2048
  return dict(
    reduce_dim=int(reduce_dim),
    projection_dim=int(projection_dim),
    depth=depth,
    decoder_intermediate_size=int(ffn),
    use_complex_transposed_convolution="trans_conv.0.weight" in state,
  )


def backbone_of(state: dict[str, np.ndarray]) -> dict[str, int]:
  """What a decoder file's shapes show of the CLIP it was trained on (`backbone.check_backbone`): the vision
  width its reduces read and the projection dim FiLM reads; {} for an incomplete file (its keys are named
  one by one when it loads)."""
  try:
    return {
      "width": int(np.shape(state["reduces.0.weight"])[1]),
      "projection": int(np.shape(state["film_mul.weight"])[1]),
    }
  except (KeyError, IndexError):
    return {}


def decoder_config(clip_config: dict, state: dict[str, np.ndarray], **overrides) -> ClipSegConfig:
  """ClipSegConfig for an original decoder file on top of an HF CLIP config dict."""
  fields = infer_decoder_fields(state)
  depth = fields.pop("depth")
  fields.pop("projection_dim")
  fields.update(overrides)
  try:
    cfg = ClipSegConfig.from_clip_dict(clip_config, **fields)
  except ValueError as e:  # the paper's files do not record extract_layers; (3, 6, 9) fits ViT-B/16
    raise ValueError(
      f"{e}; this decoder file has no <file>.json sidecar recording its extract_layers: pass extract_layers= "
      "(convert: --extract-layers) for this CLIP"
    ) from None
  if cfg.decoder_depth != depth:
    raise ValueError(
      f"the decoder file has {depth} blocks but extract_layers={list(cfg.extract_layers)} "
      f"names {cfg.decoder_depth}; pass extract_layers with {depth} entries"
    )
  return cfg
