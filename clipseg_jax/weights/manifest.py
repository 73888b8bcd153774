"""The model manifest: one typed, versioned record of what a trained model is, written as its own JSON
file (`MANIFEST_FILE`) beside `config.json` by the trainer, `save` and every export.

It holds the architecture (the `ClipSegConfig`), the input size the model takes (the square side its
images are resized to; not `VisionConfig.image_size`, the size the CLIP's position embeddings were
trained at), the visual prompt mode it was trained with, the prompt kinds it saw and whether the prompt
was withheld (the ablation), the CLIP it needs with that CLIP's fingerprint, and where it came from.

Models written before the manifest kept these facts in other places (`preprocessor_config.json`, an
original file's sidecar, a workdir's run config and `base.json`, and `config.extra`); the loaders derive a
manifest from those (`derive`), so old workdirs and exports still load."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from clipseg_jax.config import ClipSegConfig
from clipseg_jax.weights.io import write_text_atomic

MANIFEST_FILE = "clipseg_manifest.json"
VERSION = 1  # the manifest layout this code writes; it reads this one and older
DEFAULT_IMAGE_SIZE = 352  # the released models' input size (preprocess.IMAGE_SIZE)
DEFAULT_PROMPT_MODE = "crop_blur_highlight"  # the paper's visual prompt engineering, the released models'
PROMPT_KINDS = ("text", "visual")
# Where models written before the manifest kept its facts: keys of `config.extra` (`config.json`).
LEGACY_PROVENANCE = "clipseg_jax_provenance"
LEGACY_KEYS = ("trained_prompts", "withhold_prompt", "clip_finetuned", LEGACY_PROVENANCE)


class ManifestError(ValueError):
  """A manifest file that cannot be read: damaged, of a newer version, or with a bad field."""


@dataclasses.dataclass(frozen=True)
class Manifest:
  """What a trained model is. `provenance`: base_model, license, training (the recipe: dataset, steps,
  batch size, optimiser, ...), as model cards show them."""

  architecture: ClipSegConfig
  image_size: int = DEFAULT_IMAGE_SIZE
  prompt_mode: str = DEFAULT_PROMPT_MODE
  trained_prompts: tuple[str, ...] = PROMPT_KINDS
  withhold_prompt: bool = False
  clip: str | None = None
  clip_sha256: str | None = None
  clip_finetuned: bool = False
  provenance: dict = dataclasses.field(default_factory=dict, compare=False)
  version: int = VERSION

  def __post_init__(self):
    object.__setattr__(self, "architecture", without_legacy(self.architecture))
    object.__setattr__(self, "trained_prompts", tuple(self.trained_prompts))
    object.__setattr__(self, "provenance", dict(self.provenance or {}))
    self.validate()

  def validate(self):
    """ValueError naming the first field with a wrong value."""
    size, patch = self.image_size, self.architecture.vision_config.patch_size
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
      raise ValueError(f"image_size must be a positive integer, got {size!r}")
    if size % patch:
      raise ValueError(
        f"image_size {size} is not a multiple of the model's patch size {patch} (the decoder reads a square "
        f"grid of patches); use {max(patch, size // patch * patch)}"
      )
    if not isinstance(self.prompt_mode, str) or not self.prompt_mode:
      raise ValueError(f"prompt_mode must be a visual prompt mode's name, got {self.prompt_mode!r}")
    bad = [k for k in self.trained_prompts if k not in PROMPT_KINDS]
    if bad or not self.trained_prompts:
      raise ValueError(f"trained_prompts must name some of {', '.join(PROMPT_KINDS)}, got {list(self.trained_prompts)}")
    for name in ("withhold_prompt", "clip_finetuned"):
      if not isinstance(getattr(self, name), bool):
        raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
    for name in ("clip", "clip_sha256"):
      if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
        raise ValueError(f"{name} must be a string or null, got {getattr(self, name)!r}")

  def replace(self, **changes) -> Manifest:
    return dataclasses.replace(self, **changes)

  # ---- JSON ---------------------------------------------------------------------------------------

  def to_dict(self) -> dict[str, Any]:
    return {
      "format": "clipseg-jax model manifest",
      "version": VERSION,
      "architecture": self.architecture.to_dict(),
      "input": {"image_size": self.image_size},
      "prompts": {"mode": self.prompt_mode, "trained": list(self.trained_prompts), "withheld": self.withhold_prompt},
      "clip": {"source": self.clip, "sha256": self.clip_sha256, "finetuned": self.clip_finetuned},
      "provenance": self.provenance,
    }

  @classmethod
  def from_dict(cls, raw, what: str = "manifest") -> Manifest:
    """A manifest from its JSON form; a one-line ManifestError starting with `what` when it is not one."""
    if not isinstance(raw, dict):
      raise ManifestError(f"{what} is not a model manifest (a JSON object), got {type(raw).__name__}")
    version = raw.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
      raise ManifestError(f"{what} has no valid 'version' (a positive integer), got {version!r}")
    if version > VERSION:
      raise ManifestError(
        f"{what} has manifest version {version}, newer than this clipseg-jax reads (up to {VERSION}): "
        "upgrade clipseg-jax (pip install -U clipseg-jax)"
      )
    try:
      sections = {k: raw.get(k) or {} for k in ("input", "prompts", "clip")}
      bad = [k for k, v in sections.items() if not isinstance(v, dict)]
      if bad or not isinstance(raw.get("provenance") or {}, dict):
        raise ValueError(f"'{(bad or ['provenance'])[0]}' must be a JSON object")
      if not isinstance(raw.get("architecture"), dict):
        raise ValueError("'architecture' (the model's config.json) is missing")
      arch = ClipSegConfig.from_dict(raw["architecture"])
      arch.check_types()
      inp, prompts, clip = sections["input"], sections["prompts"], sections["clip"]
      return cls(
        architecture=arch,
        image_size=inp.get("image_size", DEFAULT_IMAGE_SIZE),
        prompt_mode=prompts.get("mode", DEFAULT_PROMPT_MODE),
        trained_prompts=_list(prompts.get("trained", list(PROMPT_KINDS)), "prompts.trained"),
        withhold_prompt=prompts.get("withheld", False),
        clip=clip.get("source"),
        clip_sha256=clip.get("sha256"),
        clip_finetuned=clip.get("finetuned", False),
        provenance=raw.get("provenance") or {},
        version=version,
      )
    except (ValueError, TypeError, KeyError, AttributeError) as e:
      raise ManifestError(f"{what}: {e}") from None

  def write(self, directory: str | os.PathLike) -> Path:
    return write_text_atomic(
      Path(directory) / MANIFEST_FILE, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
    )


def _list(value, name: str) -> list:
  if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
    raise ValueError(f"{name} must be a list, got {value!r}")
  return list(value)


def path_of(directory: str | os.PathLike) -> Path:
  return Path(directory) / MANIFEST_FILE


def read(directory: str | os.PathLike) -> Manifest | None:
  """The manifest in `directory`, or None where it has none (written before manifests existed)."""
  path = path_of(directory)
  if not path.is_file():
    return None
  try:
    raw = json.loads(path.read_text())
  except (ValueError, UnicodeDecodeError) as e:
    raise ManifestError(f"{path} is not valid JSON (damaged?): {e}") from None
  return Manifest.from_dict(raw, str(path))


def read_or_derive(directory, config: ClipSegConfig, **facts) -> Manifest:
  """The manifest in `directory`, checked against the `config.json` the weights are read with; else one
  derived from the places older versions kept its facts (`derive(config, **facts)`)."""
  manifest = read(directory)
  if manifest is None:
    return derive(config, **facts)
  if manifest.architecture != without_legacy(config):
    raise ManifestError(
      f"{path_of(directory)} describes another architecture than {Path(directory) / 'config.json'} "
      "(edited by hand?): write the model again"
    )
  return manifest


def derive(
  config: ClipSegConfig,
  *,
  image_size: int | None = None,
  prompt_mode: str | None = None,
  trained_prompts=None,
  withhold_prompt: bool | None = None,
  clip: str | None = None,
  clip_sha256: str | None = None,
  clip_finetuned: bool | None = None,
  provenance: dict | None = None,
) -> Manifest:
  """A manifest for a model written before manifests: the given facts (read by the loader from the
  format's own files), then what `config.extra` recorded (`LEGACY_KEYS`), then the released models'
  defaults."""
  extra = config.extra
  legacy = dict(extra.get(LEGACY_PROVENANCE) or {})
  return Manifest(
    architecture=config,
    image_size=DEFAULT_IMAGE_SIZE if image_size is None else image_size,
    prompt_mode=prompt_mode or DEFAULT_PROMPT_MODE,
    trained_prompts=trained_prompts or extra.get("trained_prompts") or PROMPT_KINDS,
    withhold_prompt=bool(extra.get("withhold_prompt", False)) if withhold_prompt is None else withhold_prompt,
    clip=clip if clip is not None else legacy.pop("clip", None),
    clip_sha256=clip_sha256 if clip_sha256 is not None else legacy.pop("clip_sha256", None),
    clip_finetuned=bool(extra.get("clip_finetuned", False)) if clip_finetuned is None else clip_finetuned,
    provenance={k: v for k, v in {**legacy, **(provenance or {})}.items() if k not in ("clip", "clip_sha256")},
  )


def without_legacy(config: ClipSegConfig) -> ClipSegConfig:
  """`config` without the manifest's facts that older versions kept in `config.extra` (a channel for HF
  keys this project does not model)."""
  if not any(k in config.extra for k in LEGACY_KEYS):
    return config
  return dataclasses.replace(config, extra={k: v for k, v in config.extra.items() if k not in LEGACY_KEYS})
