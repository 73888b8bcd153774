"""Model configuration: dataclasses whose fields mirror Hugging Face `CLIPSegConfig`.

Read from a `config.json` (HF CLIPSeg, or an HF CLIP config for the towers) and written back to one
that `transformers.CLIPSegConfig` accepts. Keys we do not model are kept in `extra` so a round trip
loses nothing.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import os
from typing import Any


def _split_known(cls, d: dict) -> tuple[dict, dict]:
  names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
  known = {k: v for k, v in d.items() if k in names}
  extra = {k: v for k, v in d.items() if k not in names}
  return known, extra


class _SubConfig:
  @classmethod
  def from_dict(cls, d: dict):
    known, extra = _split_known(cls, d)
    return cls(**known, extra=extra)


def _is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_types(obj, prefix: str, positive=(), ints=(), optional_ints=(), numbers_=(), strings=(), bools=()):
  """ValueError naming the first field of `obj` whose value has the wrong type (or is not > 0)."""

  def bad(name, want):
    raise ValueError(f"{prefix}{name} must be {want}, got {getattr(obj, name)!r}")

  for name in positive:
    value = getattr(obj, name)
    if not _is_int(value) or value <= 0:
      bad(name, "a positive integer")
  for name in ints:
    if not _is_int(getattr(obj, name)):
      bad(name, "an integer")
  for name in optional_ints:
    if getattr(obj, name) is not None and not _is_int(getattr(obj, name)):
      bad(name, "an integer or null")
  for name in numbers_:
    value = getattr(obj, name)
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
      bad(name, "a number")
  for name in strings:
    if not isinstance(getattr(obj, name), str):
      bad(name, "a string")
  for name in bools:
    if not isinstance(getattr(obj, name), bool):
      bad(name, "true or false")


@dataclasses.dataclass
class TextConfig(_SubConfig):
  """CLIP text tower (HF `CLIPSegTextConfig` fields)."""

  vocab_size: int = 49408
  hidden_size: int = 512
  intermediate_size: int = 2048
  num_hidden_layers: int = 12
  num_attention_heads: int = 8
  max_position_embeddings: int = 77
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  pad_token_id: int = 1
  bos_token_id: int = 49406
  # 2 selects the legacy pooling `input_ids.argmax(-1)` (HF keeps it for old checkpoints).
  eos_token_id: int = 49407
  extra: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)


@dataclasses.dataclass
class VisionConfig(_SubConfig):
  """CLIP vision tower (HF `CLIPSegVisionConfig` fields)."""

  hidden_size: int = 768
  intermediate_size: int = 3072
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  num_channels: int = 3
  image_size: int = 224  # the size the position embeddings were trained at
  patch_size: int = 16
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  extra: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

  @property
  def grid_size(self) -> int:
    return self.image_size // self.patch_size


@dataclasses.dataclass
class ClipSegConfig:
  """CLIPSeg (HF `CLIPSegConfig` fields). Defaults: the released rd64 models on ViT-B/16."""

  text_config: TextConfig = dataclasses.field(default_factory=TextConfig)
  vision_config: VisionConfig = dataclasses.field(default_factory=VisionConfig)
  projection_dim: int = 512
  logit_scale_init_value: float = 2.6592
  extract_layers: tuple[int, ...] = (3, 6, 9)
  reduce_dim: int = 64
  decoder_num_attention_heads: int = 4
  decoder_intermediate_size: int = 2048
  # HF stores "quick_gelu" here but its decoder always runs ReLU; we keep the field only for round trips.
  decoder_hidden_act: str = "quick_gelu"
  conditional_layer: int = 0
  use_complex_transposed_convolution: bool = False
  # Not in HF: the refined head's two upsampling kernels (k1, k2) with k1 * k2 = patch size (patch 14:
  # (7, 2), patch 32: (8, 4)). None: transformers' (patch // 4, patch // 4), which upsamples by the patch
  # size only for patch 16 (patch 32 by 64, patch 12 by 9); exported HF configs need None.
  transposed_convolution_kernels: tuple[int, int] | None = None
  # Not in HF: False gives the paper's CLIP-Deconv baseline (FiLM, projection, head; no blocks).
  use_decoder_blocks: bool = True
  # Not in HF: the original's CLIPDenseBaseline (models/clipseg.py) when set: no decoder blocks, and after
  # FiLM a `reduce2` MLP (Linear(reduce_dim, reduce2_dim), ReLU, Linear(reduce2_dim, reduce_dim)).
  reduce2_dim: int | None = None
  extra: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

  def __post_init__(self):
    layers = self.extract_layers
    if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__") or not all(_is_int(i) for i in layers):
      raise ValueError(f"extract_layers must be a list of integers, got {layers!r}")
    self.extract_layers = tuple(int(i) for i in layers)
    kernels = self.transposed_convolution_kernels
    if kernels is not None and not isinstance(kernels, (str, bytes)) and hasattr(kernels, "__iter__"):
      self.transposed_convolution_kernels = tuple(kernels)
    self.validate()

  def check_types(self):
    """ValueError naming the field and its value where one has the wrong type, or is not > 0 where it
    must be (a `config.json` with `"32"`, `[16]`, `null` or `0` where a size belongs)."""
    for name, sub, kind in (
      ("text_config", self.text_config, TextConfig),
      ("vision_config", self.vision_config, VisionConfig),
    ):
      if not isinstance(sub, kind):
        raise ValueError(f"{name} must be a {kind.__name__} (a JSON object in config.json), got {sub!r}")
    _check_types(
      self.text_config,
      "text_config.",
      positive=(
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "max_position_embeddings",
      ),
      ints=("eos_token_id",),
      optional_ints=("pad_token_id", "bos_token_id"),
      numbers_=("layer_norm_eps",),
      strings=("hidden_act",),
    )
    _check_types(
      self.vision_config,
      "vision_config.",
      positive=(
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_channels",
        "image_size",
        "patch_size",
      ),
      numbers_=("layer_norm_eps",),
      strings=("hidden_act",),
    )
    _check_types(
      self,
      "",
      positive=("projection_dim", "reduce_dim", "decoder_num_attention_heads", "decoder_intermediate_size"),
      ints=("conditional_layer",),
      numbers_=("logit_scale_init_value",),
      strings=("decoder_hidden_act",),
      bools=("use_complex_transposed_convolution", "use_decoder_blocks"),
      optional_ints=("reduce2_dim",),
    )

  def validate(self):
    self.check_types()
    v = self.vision_config
    if not self.extract_layers:
      raise ValueError("extract_layers must name at least one vision block")
    bad = [i for i in self.extract_layers if not 0 <= i < v.num_hidden_layers]
    if bad:
      raise ValueError(
        f"extract_layers {list(self.extract_layers)} name blocks {bad} outside the vision tower's "
        f"{v.num_hidden_layers} blocks (0-based)"
      )
    if not 0 <= self.conditional_layer < len(self.extract_layers):
      raise ValueError(
        f"conditional_layer={self.conditional_layer} must index one of the {len(self.extract_layers)} decoder blocks"
      )
    if self.reduce2_dim is not None and (self.reduce2_dim <= 0 or self.use_decoder_blocks):
      raise ValueError(
        f"reduce2_dim={self.reduce2_dim} (the CLIPDenseBaseline's MLP) needs a positive width and "
        "use_decoder_blocks=False (the baseline has no decoder blocks)"
      )
    kernels = self.transposed_convolution_kernels
    if kernels is not None:
      if len(kernels) != 2 or not all(_is_int(k) and k > 0 for k in kernels):
        raise ValueError(f"transposed_convolution_kernels must be two positive integers, got {kernels!r}")
      if kernels[0] * kernels[1] != v.patch_size:
        raise ValueError(
          f"transposed_convolution_kernels {list(kernels)} upsample by {kernels[0] * kernels[1]}, not by the "
          f"patch size {v.patch_size}"
        )
    elif self.use_complex_transposed_convolution and v.patch_size % 4:
      raise ValueError(
        f"the refined head needs a patch size divisible by 4, got {v.patch_size}; set "
        "transposed_convolution_kernels to two kernels whose product is the patch size (e.g. [7, 2] for 14)"
      )
    for name, hidden, heads in (
      ("text", self.text_config.hidden_size, self.text_config.num_attention_heads),
      ("vision", v.hidden_size, v.num_attention_heads),
      ("decoder", self.reduce_dim, self.decoder_num_attention_heads),
    ):
      if hidden % heads:
        raise ValueError(f"{name} width {hidden} is not divisible by its {heads} attention heads")

  @property
  def head_kernels(self) -> tuple[int, int]:
    """The refined head's upsampling kernels: the configured ones, else transformers' (p // 4, p // 4)."""
    p = self.vision_config.patch_size
    return self.transposed_convolution_kernels or (p // 4, p // 4)

  @property
  def hf_compatible(self) -> bool:
    """Whether transformers' CLIPSeg builds this model (it has no CLIP-Deconv and only p // 4 kernels)."""
    p = self.vision_config.patch_size
    kernels_ok = self.transposed_convolution_kernels in (None, (p // 4, p // 4))
    plain = self.use_decoder_blocks and self.reduce2_dim is None
    return plain and (kernels_ok or not self.use_complex_transposed_convolution)

  @property
  def decoder_depth(self) -> int:
    return len(self.extract_layers)

  @property
  def vision_depth(self) -> int:
    """Vision blocks that segmentation needs (the decoder reads none after the deepest extracted one)."""
    return max(self.extract_layers) + 1

  # ---- (de)serialisation ---------------------------------------------------------------------

  @classmethod
  def from_dict(cls, d: dict) -> ClipSegConfig:
    if not isinstance(d, dict):
      raise ValueError(f"a CLIPSeg config must be a JSON object, got {type(d).__name__}")
    d = dict(d)
    subs = {}
    for name in ("text_config", "vision_config"):
      sub = d.pop(name, None) or {}
      if not isinstance(sub, dict):
        raise ValueError(f"{name} must be a JSON object, got {sub!r}")
      subs[name] = sub
    text = TextConfig.from_dict(subs["text_config"])
    vision = VisionConfig.from_dict(subs["vision_config"])
    known, extra = _split_known(cls, d)
    return cls(text_config=text, vision_config=vision, **known, extra=extra)

  @classmethod
  def from_json(cls, path: str | os.PathLike) -> ClipSegConfig:
    with open(path) as f:
      return cls.from_dict(json.load(f))

  def to_dict(self) -> dict[str, Any]:
    """A dict in HF `CLIPSegConfig` layout (what `config.json` holds)."""

    def plain(obj):
      out = dict(obj.extra)
      out.update(
        {
          f.name: getattr(obj, f.name)
          for f in dataclasses.fields(obj)
          if f.name not in ("extra", "text_config", "vision_config")
        }
      )
      return out

    text = plain(self.text_config)
    text.setdefault("model_type", "clipseg_text_model")
    vision = plain(self.vision_config)
    vision.setdefault("model_type", "clipseg_vision_model")
    out = plain(self)
    out["extract_layers"] = list(self.extract_layers)
    if self.use_decoder_blocks:
      out.pop("use_decoder_blocks")
    if self.reduce2_dim is None:
      out.pop("reduce2_dim")
    if self.transposed_convolution_kernels is None:
      out.pop("transposed_convolution_kernels")
    else:
      out["transposed_convolution_kernels"] = list(self.transposed_convolution_kernels)
    out["text_config"] = text
    out["vision_config"] = vision
    out["model_type"] = "clipseg"
    out.setdefault("architectures", ["CLIPSegForImageSegmentation"])
    out.pop("transformers_version", None)
    text.pop("transformers_version", None)
    vision.pop("transformers_version", None)
    return out

  def to_json(self, path: str | os.PathLike):
    with open(path, "w") as f:
      json.dump(self.to_dict(), f, indent=2, sort_keys=True)
      f.write("\n")

  @classmethod
  def from_clip_dict(cls, clip: dict, **decoder_fields) -> ClipSegConfig:
    """Towers from an HF `CLIPConfig` dict (e.g. openai/clip-vit-base-patch16), decoder from kwargs."""
    text = TextConfig.from_dict({**(clip.get("text_config") or {}), "model_type": "clipseg_text_model"})
    vision = VisionConfig.from_dict({**(clip.get("vision_config") or {}), "model_type": "clipseg_vision_model"})
    return cls(
      text_config=text,
      vision_config=vision,
      projection_dim=clip.get("projection_dim", 512),
      logit_scale_init_value=clip.get("logit_scale_init_value", 2.6592),
      **decoder_fields,
    )


def tiny_config(**overrides) -> ClipSegConfig:
  """A few-thousand-parameter config for tests and examples (patch 16, 64 px native size)."""
  text = TextConfig(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77
  )
  vision = VisionConfig(
    hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, image_size=64, patch_size=16
  )
  fields = dict(
    text_config=text,
    vision_config=vision,
    projection_dim=24,
    extract_layers=(1, 2, 3),
    reduce_dim=16,
    decoder_num_attention_heads=4,
    decoder_intermediate_size=32,
  )
  fields.update(overrides)
  return ClipSegConfig(**fields)
