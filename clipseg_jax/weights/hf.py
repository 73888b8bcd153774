"""Parameter names: our Flax tree <-> Hugging Face `CLIPSegForImageSegmentation` state dict.

Module names are HF's, with `name_3` for `name.3`, so the whole conversion is this leaf table:

  Flax leaf            HF leaf     tensor
  Dense  kernel [i,o]  weight      transposed ([o, i])
  Conv   kernel 4-D    weight      torch [o, i, kh, kw] / ConvTranspose [i, o, kh, kw] <-> (2, 3, 1, 0)
  LayerNorm scale      weight      as is
  Embed embedding      weight      as is
  bias, class_embedding, logit_scale   same name, as is
"""

from __future__ import annotations

import re

import jax
import numpy as np

from clipseg_jax.config import ClipSegConfig
from clipseg_jax.weights.errors import CheckpointMismatchError

# Non-persistent buffers that older HF checkpoints still contain; nothing reads them.
IGNORED_HF_KEYS = re.compile(r".*\.position_ids$")

_TO_TORCH = {2: (1, 0), 4: (3, 2, 0, 1)}
_FROM_TORCH = {2: (1, 0), 4: (2, 3, 1, 0)}


def hf_key(path: tuple[str, ...]) -> str:
  """('clip', 'vision_model', 'encoder', 'layers_0', ..., 'kernel') -> 'clip.vision_model.encoder.layers.0...weight'."""
  *modules, leaf = path
  modules = [re.sub(r"_(\d+)$", r".\1", m) for m in modules]
  leaf = "weight" if leaf in ("kernel", "scale", "embedding") else leaf
  return ".".join(modules + [leaf])


def _leaf_paths(tree) -> list[tuple[tuple[str, ...], object]]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return [(tuple(k.key for k in path), leaf) for path, leaf in flat]


def to_hf(params) -> dict[str, np.ndarray]:
  """Flax params -> HF state dict (numpy, contiguous)."""
  out = {}
  for path, leaf in _leaf_paths(params):
    x = np.asarray(leaf)
    if path[-1] == "kernel":
      x = x.transpose(_TO_TORCH[x.ndim])
    out[hf_key(path)] = np.array(x, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
  return out


def from_hf(
  state: dict[str, np.ndarray], template, *, ignore: re.Pattern | None = IGNORED_HF_KEYS, source: str = "checkpoint"
) -> dict:
  """HF state dict -> Flax params shaped like `template` (a params tree or its `jax.eval_shape`).

  Every template leaf must be present with the right shape and every state key used (buffers
  matching `ignore` aside); otherwise one error lists all problems with both shapes.
  """
  leaves, missing, misshaped = [], [], []
  used = set()
  for path, want in _leaf_paths(template):
    key = hf_key(path)
    if key not in state:
      missing.append(f"{key} (expected {tuple(want.shape)})")
      leaves.append(None)
      continue
    used.add(key)
    x = np.asarray(state[key])
    if path[-1] == "kernel" and x.ndim in _FROM_TORCH:
      x = x.transpose(_FROM_TORCH[x.ndim])
    if tuple(x.shape) != tuple(want.shape):
      misshaped.append(
        f"{key}: checkpoint {tuple(np.asarray(state[key]).shape)}, model expects {_torch_shape(path, want.shape)}"
      )
    leaves.append(x.astype(want.dtype, copy=False))
  unexpected = sorted(k for k in state if k not in used and not (ignore and ignore.fullmatch(k)))
  if missing or misshaped or unexpected:
    raise CheckpointMismatchError(source, missing=missing, unexpected=unexpected, misshaped=misshaped)
  treedef = jax.tree_util.tree_structure(template)
  return jax.tree_util.tree_unflatten(treedef, leaves)


def _torch_shape(path, shape) -> tuple:
  shape = tuple(shape)
  if path[-1] == "kernel" and len(shape) in _TO_TORCH:
    return tuple(shape[i] for i in _TO_TORCH[len(shape)])
  return shape


def hf_shapes(template) -> dict[str, tuple[int, ...]]:
  """HF key -> torch shape for a params tree or template (no arrays needed)."""
  return {hf_key(path): _torch_shape(path, leaf.shape) for path, leaf in _leaf_paths(template)}


def param_template(config: ClipSegConfig):
  """Shapes/dtypes of the params for `config`, without allocating them."""
  from clipseg_jax.models.clipseg import init_params

  return jax.eval_shape(lambda: init_params(config))
