"""Reading and writing state dicts (safetensors without torch; `.bin`/`.pth` through torch) and
resolving a `source` (local path or hub id) to local files.

What this module writes carries a content digest that reading checks: safetensors files a sha256 in
their header metadata (`DIGEST_KEY`, beside `"format": "pt"`, so transformers loads them as before),
`.pth` files a `<file>.sha256` sidecar (`sha256sum` format). Files without one (transformers' own,
downloads) load unchecked. Errors reading a file are ValueErrors that name it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from clipseg_jax.project import install_hint

HF_WEIGHT_FILES = (
  "model.safetensors",
  "model.safetensors.index.json",
  "pytorch_model.bin",
  "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json")
# sha256 over the tensors in sorted-key order: each key, dtype, shape and C-order bytes (`state_digest`).
DIGEST_KEY = "clipseg_jax.sha256"
WRITE_ERROR_CHARS = 400  # a write error's reason is cut to this (TensorStore's name whole file specs)
NEW_FILE_MODE = 0o666  # what open() asks for a new file, before the umask (mkstemp's temporaries are 0600)
# Models shipped inside the package, by name (`load_model("embedded:synthetic")`, `clip="embedded:synthetic-clip"`).
ASSETS = Path(__file__).resolve().parent.parent / "assets"
EMBEDDED_PREFIX = "embedded:"
EMBEDDED = {
  "embedded:synthetic-clip": ASSETS / "synthetic_clip",  # small CLIP towers made by `clipseg-jax pretrain-clip`
  "embedded:synthetic": ASSETS / "synthetic_clipseg",  # the demo's decoder on them (make_embedded.py)
}
# What `segment`, `serve` and the apps load when given no checkpoint: offline out of the box (synthetic scenes
# only); photos want a released model, one argument away (--checkpoint CIDAS/clipseg-rd64-refined).
DEFAULT_CHECKPOINT = "embedded:synthetic"


def file_mode() -> int:
  """The mode a plain `open(path, "w")` gives a new file: 0666 less the process umask (0644 usually)."""
  mask = os.umask(0o022)  # the umask can only be read by setting it; restored at once
  os.umask(mask)
  return NEW_FILE_MODE & ~mask


def content_digest(entries, header) -> str | None:
  """The one content digest of arrays (safetensors files, Flax exports, CLIP fingerprints, training
  checkpoints): sha256 over `(label, array)` entries, each as `header(label, a)` (a str) then `a`'s
  C-order bytes, `a` = np.ascontiguousarray(array) (so a scalar counts as shape (1,)). Each format
  frames its entries its own way, fixed by the digests it has written. None where an array is None
  (another process holds it)."""
  h = hashlib.sha256()
  for label, array in entries:
    if array is None:
      return None
    a = np.ascontiguousarray(array)
    h.update(header(label, a).encode())
    h.update(a.reshape(-1).view(np.uint8))
  return h.hexdigest()


def state_digest(state: dict[str, np.ndarray]) -> str:
  """A state dict's digest (`DIGEST_KEY` of safetensors files): by sorted key, the key, dtype and shape
  as JSON, then the bytes."""
  return content_digest(
    ((k, state[k]) for k in sorted(state)), lambda k, a: json.dumps([k, a.dtype.str, list(a.shape)])
  )


def check_finite(state: dict[str, np.ndarray], path) -> dict[str, np.ndarray]:
  """A file without a digest cannot tell flipped bytes from weights; NaN or inf in any float tensor is
  refused (no trained CLIPSeg holds them, and they would only give NaN masks)."""
  for k, v in state.items():
    v = np.asarray(v)
    if v.dtype.kind in "fc" and not np.all(np.isfinite(v)):
      raise ValueError(f"{path} is corrupt: tensor {k!r} holds NaN or infinite values (export or download it again)")
  return state


def write_error(path, error: BaseException, needed: int | None = None) -> OSError:
  """A failed write (disk full, permissions, a vanished directory) as one OSError naming `path`.
  `needed`: the bytes it was writing, to name a full disk where the library's error does not."""
  text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
  if "RESOURCE_EXHAUSTED" in text or "No space left" in text:  # TensorStore's word for a full disk (Orbax)
    text = f"no space left on the device ({text})"
  if len(text) > WRITE_ERROR_CHARS:
    text = text[: WRITE_ERROR_CHARS - 3] + "..."
  if needed is not None and "no space left" not in text:
    try:
      if shutil.disk_usage(Path(path).parent).free < needed:
        text = f"no space left on the device ({text})"
    except OSError:
      pass
  return OSError(f"cannot write {path}: {text}")


class _OrbaxErrors(logging.Filter):
  """Drops Orbax's own error records: each background thread logs the same failure (a full disk, a
  damaged file) with its traceback, 150+ of them; the caller raises that failure once, as one line."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.levelno >= logging.ERROR and "orbax" in record.pathname)


def quiet_orbax():
  """Orbax failures as the one error they raise: its threads' error logs dropped, and the "Event loop
  is closed" tracebacks that TensorStore callbacks print (`sys.unraisablehook`) after Orbax closed its
  loop; anything else reaches the previous hook."""
  for name in ("absl", "orbax"):
    logger = logging.getLogger(name)
    if not any(isinstance(f, _OrbaxErrors) for f in logger.filters):
      logger.addFilter(_OrbaxErrors())
  previous = sys.unraisablehook
  if getattr(previous, "_clipseg_quiet", False):
    return

  def hook(unraisable):
    e = unraisable.exc_value
    if isinstance(e, RuntimeError) and str(e) == "Event loop is closed":
      return
    previous(unraisable)

  hook._clipseg_quiet = True
  sys.unraisablehook = hook


def file_digest(path: Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def fingerprint(tree) -> str:
  """sha256 of a param tree's values (float32), each leaf with its path and shape. A trained decoder is
  only meaningful on the exact CLIP it was trained on: workdirs, exports and model cards record the
  fingerprint of `params["clip"]`, and loading checks it where it was recorded."""
  import jax

  leaves = sorted(jax.tree_util.tree_leaves_with_path(jax.device_get(tree)), key=lambda x: str(x[0]))
  entries = ((jax.tree_util.keystr(path), np.asarray(leaf, np.float32)) for path, leaf in leaves)
  return content_digest(entries, lambda name, a: f"{name}{a.shape}")


def sidecar(path: Path) -> Path:
  return path.with_name(path.name + ".sha256")


def read_state(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A state dict as numpy arrays from a weights file, a shard index, or an HF model directory."""
  path = Path(path)
  if path.is_dir():
    for name in HF_WEIGHT_FILES:
      if (path / name).exists():
        return read_state(path / name)
    raise FileNotFoundError(f"{path} holds none of {', '.join(HF_WEIGHT_FILES)}")
  if path.name.endswith(".index.json"):
    try:
      with open(path) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
      raise ValueError(f"{path} is not a valid shard index (JSON with a 'weight_map' object): {e!r}") from e
    state = {}
    for shard in shards:
      state.update(read_state(path.parent / shard))
    return state
  if not path.is_file():
    raise FileNotFoundError(f"no such weights file: {path}")
  if path.suffix == ".safetensors":
    return _read_safetensors(path)
  return _read_torch(path)


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
  from safetensors import SafetensorError, safe_open
  from safetensors.numpy import load_file

  try:
    with safe_open(str(path), framework="numpy") as f:
      metadata = f.metadata() or {}
    state = load_file(str(path))
  except (SafetensorError, ValueError, TypeError, OverflowError) as e:
    raise ValueError(f"cannot read {path}: not a complete safetensors file (truncated or corrupt?): {e}") from e
  want = metadata.get(DIGEST_KEY)
  if want is None:
    return check_finite(state, path)
  if state_digest(state) != want:
    raise ValueError(
      f"{path} is corrupt: its tensors do not match the sha256 digest recorded when it was written "
      f"({DIGEST_KEY} in its header); export or download it again"
    )
  return state


def _read_torch(path: Path) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError:
    raise ImportError(
      f"reading {path.name} needs PyTorch: {install_hint('torch')} (safetensors files need no torch)"
    ) from None
  check = sidecar(path)
  checked = check.is_file()
  if checked:
    want = check.read_text().split()[:1]
    if want != [file_digest(path)]:
      raise ValueError(
        f"{path} is corrupt or was replaced: its sha256 does not match {check.name} (written with it); "
        f"export it again, or delete {check.name} if the new file is intended"
      )
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # noqa: BLE001 - torch raises many types here (UnpicklingError, RuntimeError, EOFError...)
    raise ValueError(
      f"cannot read {path} as a PyTorch state dict (not a torch.save file, truncated, or holding "
      f"more than tensors): {_torch_reason(e)}"
    ) from e
  if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
    obj = obj["state_dict"]
  if not isinstance(obj, dict):
    raise ValueError(f"{path} does not hold a state dict (got {type(obj).__name__})")
  out = {}
  for k, v in obj.items():
    if not isinstance(v, torch.Tensor):
      raise ValueError(f"{path} does not hold a state dict: {k!r} is a {type(v).__name__}, not a tensor")
    if v.dtype == torch.bfloat16:  # numpy has no bfloat16
      v = v.float()
    out[k] = v.detach().cpu().numpy()
  return out if checked else check_finite(out, path)


def atomic_path(final: Path):
  """A temporary sibling of `final` to write into before `os.replace` (no half-written files)."""
  fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", dir=final.parent)
  os.close(fd)
  return Path(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
  """`path.write_text(text)` that a kill or a full disk cannot leave half-written."""
  path = Path(path)
  tmp = atomic_path(path)
  try:
    tmp.write_text(text)
    _publish(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)
  return path


def _publish(tmp: Path, path: Path):
  os.chmod(tmp, file_mode())
  os.replace(tmp, path)


def _torch_reason(error: Exception) -> str:
  """The useful part of a torch.load error (its weights-only message opens with advice to load unsafely)."""
  text = str(error)
  if "WeightsUnpickler error:" in text:
    text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
  text = " ".join(text.split())
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


def write_safetensors(state: dict[str, np.ndarray], path: str | os.PathLike, metadata=None):
  """`state` as a safetensors file (atomically, with `open()`'s mode: 0644 under the usual umask) whose
  header metadata holds `"format": "pt"` (transformers needs it), `metadata`, and the `state_digest` that
  `read_state` checks."""
  from safetensors.numpy import save_file

  path = Path(path)
  arrays = {k: np.array(v, order="C") for k, v in state.items()}
  meta = {"format": "pt", **(metadata or {}), DIGEST_KEY: state_digest(arrays)}
  from safetensors import SafetensorError

  tmp = atomic_path(path)
  try:
    save_file(arrays, str(tmp), metadata=meta)
    _publish(tmp, path)
  except (OSError, SafetensorError) as e:
    raise write_error(path, e, sum(a.nbytes for a in arrays.values())) from e
  finally:
    tmp.unlink(missing_ok=True)


def write_torch(state: dict[str, np.ndarray], path: str | os.PathLike):
  """`state` as a `torch.save` file (atomically, with `open()`'s mode) with a `<file>.sha256` sidecar that
  `read_state` checks."""
  try:
    import torch
  except ImportError:
    raise ImportError(f"writing a .pth file needs PyTorch: {install_hint('torch')}") from None
  path = Path(path)
  check = sidecar(path)
  tmp = atomic_path(path)
  tmp_check = atomic_path(check)
  try:
    torch.save({k: torch.from_numpy(np.array(v, order="C")) for k, v in state.items()}, tmp)
    tmp_check.write_text(f"{file_digest(tmp)}  {path.name}\n")
    check.unlink(missing_ok=True)  # never a stale sidecar beside the new file
    _publish(tmp, path)
    _publish(tmp_check, check)
  except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
    raise write_error(path, e, sum(np.asarray(v).nbytes for v in state.values())) from e
  finally:
    tmp.unlink(missing_ok=True)
    tmp_check.unlink(missing_ok=True)


def is_hub_id(source: str) -> bool:
  s = str(source)
  return (
    not os.path.exists(s)
    and s.count("/") == 1
    and not s.startswith((".", "/", "~"))
    and not s.endswith((".pth", ".bin", ".safetensors", ".json"))
  )


def embedded(name: str) -> Path:
  """The directory of a model shipped in the package (`EMBEDDED`); a clear error for unknown names."""
  if name not in EMBEDDED:
    raise FileNotFoundError(f"no embedded model {name!r}; the package ships {', '.join(sorted(EMBEDDED))}")
  path = EMBEDDED[name]
  if not (path / "config.json").exists():
    raise FileNotFoundError(f"the embedded model {name!r} is missing from {path} (a broken installation?)")
  return path


def resolve(source: str | os.PathLike, *, revision=None, token=None, cache_dir=None) -> Path:
  """A local path for `source`: an embedded model's directory, the path itself if it exists, else a hub
  snapshot fetched (or found in the cache, e.g. with HF_HUB_OFFLINE=1) by huggingface_hub, at
  `revision` (branch, tag or commit), with `token`, in `cache_dir` (default: huggingface_hub's)."""
  s = os.path.expanduser(str(source))
  if s.startswith(EMBEDDED_PREFIX):
    return embedded(s)
  if os.path.exists(s):
    return Path(s)
  if not is_hub_id(s):
    raise FileNotFoundError(f"no such file or directory: {s}")
  from huggingface_hub import snapshot_download

  hub = {"revision": revision, "token": token, "cache_dir": None if cache_dir is None else str(cache_dir)}
  at = f" at revision {revision!r}" if revision else ""
  try:
    local = Path(
      snapshot_download(
        s,
        allow_patterns=[
          "config.json",
          "*.safetensors",
          "*.safetensors.index.json",
          *TOKENIZER_FILES,
          "preprocessor_config.json",
        ],
        **hub,
      )
    )
    if not any((local / n).exists() for n in HF_WEIGHT_FILES):  # an old repo with only .bin weights
      local = Path(snapshot_download(s, allow_patterns=["pytorch_model.bin*"], **hub))
  except Exception as e:  # noqa: BLE001 - re-raised with the source named
    raise OSError(f"could not fetch {s!r}{at} from the Hugging Face hub: {e}") from e
  return local
