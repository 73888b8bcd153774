"""Reading and writing state dicts (safetensors without torch; `.bin`/`.pth` through torch) and
resolving a `source` (local path or hub id) to local files."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

HF_WEIGHT_FILES = (
  "model.safetensors",
  "model.safetensors.index.json",
  "pytorch_model.bin",
  "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json")


def read_state(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A state dict as numpy arrays from a weights file, a shard index, or an HF model directory."""
  path = Path(path)
  if path.is_dir():
    for name in HF_WEIGHT_FILES:
      if (path / name).exists():
        return read_state(path / name)
    raise FileNotFoundError(f"{path} holds none of {', '.join(HF_WEIGHT_FILES)}")
  if path.name.endswith(".index.json"):
    with open(path) as f:
      shards = sorted(set(json.load(f)["weight_map"].values()))
    state = {}
    for shard in shards:
      state.update(read_state(path.parent / shard))
    return state
  if path.suffix == ".safetensors":
    from safetensors.numpy import load_file

    return load_file(str(path))
  return _read_torch(path)


def _read_torch(path: Path) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError:
    raise ImportError(
      f"reading {path.name} needs PyTorch: pip install 'clipseg-jax[torch]' (safetensors files need no torch)"
    ) from None
  obj = torch.load(path, map_location="cpu", weights_only=True)
  if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
    obj = obj["state_dict"]
  if not isinstance(obj, dict):
    raise ValueError(f"{path} does not hold a state dict (got {type(obj).__name__})")
  out = {}
  for k, v in obj.items():
    if v.dtype == torch.bfloat16:  # numpy has no bfloat16
      v = v.float()
    out[k] = v.detach().cpu().numpy()
  return out


def atomic_path(final: Path):
  """A temporary sibling of `final` to write into before `os.replace` (no half-written files)."""
  fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", dir=final.parent)
  os.close(fd)
  return Path(tmp)


def write_safetensors(state: dict[str, np.ndarray], path: str | os.PathLike, metadata=None):
  from safetensors.numpy import save_file

  path = Path(path)
  tmp = atomic_path(path)
  try:
    save_file({k: np.array(v, order="C") for k, v in state.items()}, str(tmp), metadata=metadata or {"format": "pt"})
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)


def write_torch(state: dict[str, np.ndarray], path: str | os.PathLike):
  try:
    import torch
  except ImportError:
    raise ImportError("writing a .pth file needs PyTorch: pip install 'clipseg-jax[torch]'") from None
  path = Path(path)
  tmp = atomic_path(path)
  try:
    torch.save({k: torch.from_numpy(np.array(v, order="C")) for k, v in state.items()}, tmp)
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)


def is_hub_id(source: str) -> bool:
  s = str(source)
  return (
    not os.path.exists(s)
    and s.count("/") == 1
    and not s.startswith((".", "/", "~"))
    and not s.endswith((".pth", ".bin", ".safetensors", ".json"))
  )


def resolve(source: str | os.PathLike) -> Path:
  """A local path for `source`: itself if it exists, else a hub snapshot (cached by huggingface_hub)."""
  s = os.path.expanduser(str(source))
  if os.path.exists(s):
    return Path(s)
  if not is_hub_id(s):
    raise FileNotFoundError(f"no such file or directory: {s}")
  from huggingface_hub import snapshot_download

  try:
    local = snapshot_download(
      s,
      allow_patterns=[
        "config.json",
        "*.safetensors",
        "*.safetensors.index.json",
        *TOKENIZER_FILES,
        "preprocessor_config.json",
      ],
    )
  except Exception as e:  # noqa: BLE001 - re-raised with the source named
    raise OSError(f"could not fetch {s!r} from the Hugging Face hub: {e}") from e
  local = Path(local)
  if not any((local / n).exists() for n in HF_WEIGHT_FILES):  # an old repo with only .bin weights
    local = Path(snapshot_download(s, allow_patterns=["pytorch_model.bin*"]))
  return local
