"""Deployable artifacts: the model as one file that runs without this package.

- StableHLO (`export_stablehlo`): a `jax.export` serialised function with the weights baked in as
  constants. It needs only `jax` to run (`jax.export.deserialize(blob).call(...)`), on every platform it
  was lowered for (CPU and CUDA by default), and any batch size. With `prompts`, their embeddings are
  computed now and baked in too: the function takes pixels only. Otherwise it takes the prompts' token
  ids and attention mask, and the tokenizer's files are written beside it.
- ONNX (`export_onnx`): the same model through transformers' PyTorch CLIPSeg and `torch.onnx.export`,
  for onnxruntime and the tools around ONNX. transformers' model runs the vision tower once per
  (image, prompt) pair; the StableHLO function runs it once per image.

Each artifact is a folder: the model file, `spec.json` (inputs, outputs, preprocessing, prompts, sizes)
and, when prompts are inputs, the tokenizer (`tokenizer.json`).

Sizes measured (float32; prompts baked in / token inputs): embedded:synthetic StableHLO 4.9 / 17.6 MiB,
ONNX 5.5 / 18.4 MiB; the ViT-B/16 refined model StableHLO 277 / 519 MiB, ONNX 278 / 521 MiB. Baked
prompts drop the text tower, and only the vision blocks the decoder reads are kept.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from clipseg_jax import preprocess
from clipseg_jax.models.clipseg import ClipSegModel
from clipseg_jax.tokenizer import MAX_LENGTH, tokenize

STABLEHLO_FILE = "model.jax_export"
ONNX_FILE = "model.onnx"
SPEC_FILE = "spec.json"
PLATFORMS = ("cpu", "cuda")  # what a StableHLO artifact is lowered for unless told
KNOWN_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # jax.export's names
ONNX_OPSET = 18


def _labels(prompts: Sequence) -> list[str]:
  return [p if isinstance(p, str) else f"visual prompt {i}" for i, p in enumerate(prompts)]


def _precision(model) -> str:
  """The matmul precision `ClipSeg`'s jitted stages use: full float32 (no TF32 on GPUs) for float32."""
  return "highest" if jnp.dtype(model.dtype) == jnp.float32 else "default"


def _spec(model, size: int, prompts: Sequence | None, *, layout: str, fmt: str, extra: dict) -> dict:
  """What a caller needs to feed the artifact and read its output."""
  pixel_shape = ["batch", size, size, 3] if layout == "NHWC" else ["batch", 3, size, size]
  inputs = [
    {
      "name": "pixel_values",
      "shape": pixel_shape,
      "dtype": "float32",
      "layout": layout,
      "preprocessing": {
        "color": "RGB",
        "resize": f"{size}x{size}, bilinear, aspect ratio not kept",
        "scale": 1 / 255,
        "mean": preprocess.MEAN.astype(float).round(6).tolist(),
        "std": preprocess.STD.astype(float).round(6).tolist(),
        "formula": "(pixel / 255 - mean) / std, per channel",
      },
    }
  ]
  if prompts is None:
    inputs += [
      {
        "name": name,
        "shape": ["prompts", "tokens"],
        "dtype": "int64" if fmt == "onnx" else "int32",
        "tokenizer": "tokenizer.json (CLIP BPE; the texts cleaned as clipseg_jax.tokenizer.clean_text)",
        "max_tokens": MAX_LENGTH,
      }
      for name in ("input_ids", "attention_mask")
    ]
  n = "prompts" if prompts is None else len(prompts)
  return {
    "format": fmt,
    "image_size": size,
    "model_image_size": model.config.vision_config.image_size,
    "inputs": inputs,
    "outputs": [
      {
        "name": "logits",
        "shape": ["batch", n, size, size],
        "dtype": "float32",
        "postprocessing": "probabilities = sigmoid(logits); resize bilinearly to the image's own size",
      }
    ],
    "prompts": None if prompts is None else _labels(prompts),
    **extra,
  }


def _write_spec(out: Path, spec: dict, model, prompts):
  if prompts is None:
    model.tokenizer.save_pretrained(out)
  (out / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n")


def _check_target(out_dir, overwrite: bool):
  """Refuse a file, or a non-empty folder without `overwrite`: before the (long) export, not after."""
  out = Path(out_dir)
  if out.exists() and not out.is_dir():
    raise FileExistsError(f"{out} exists and is not a folder: an artifact is a folder")
  if out.is_dir() and any(out.iterdir()) and not overwrite:
    raise FileExistsError(f"{out} already exists: pass overwrite=True (--overwrite) or choose another folder")


def _prepare(out_dir, overwrite: bool) -> Path:
  """The artifact folder, created once the artifact is built; with `overwrite`, only the files an artifact
  writes are removed (never anything else a user keeps there)."""
  _check_target(out_dir, overwrite)
  out = Path(out_dir)
  for name in (STABLEHLO_FILE, ONNX_FILE, SPEC_FILE, "tokenizer.json", "tokenizer_config.json"):
    (out / name).unlink(missing_ok=True)
  out.mkdir(parents=True, exist_ok=True)
  return out


def read_spec(folder: str | os.PathLike) -> dict:
  """An artifact folder's `spec.json`."""
  path = Path(folder) / SPEC_FILE
  try:
    return json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"{Path(folder)} is not an artifact folder (cannot read {SPEC_FILE}: {e})") from e


def stablehlo_function(model, prompts: Sequence | None = None):
  """The function an artifact holds, weights closed over: pixels [B, S, S, 3] (+ token ids and mask
  [P, L] without `prompts`) -> logits [B, P, S, S]; the same stages as `ClipSeg.predict`."""
  module, params = model.module, model.params
  encode = lambda px: module.apply({"params": params}, px, method=ClipSegModel.encode_image)
  decode = lambda reduced, cond: model._decode_impl(params, reduced, cond, None)  # predict's decoder, unchunked
  if prompts is not None:
    cond = jnp.asarray(model.encode_prompts(list(prompts)), jnp.float32)
    return lambda pixel_values: decode(encode(pixel_values), cond)

  def with_text(pixel_values, input_ids, attention_mask):
    cond = module.apply({"params": params}, input_ids, attention_mask, method=ClipSegModel.text_embeddings)
    return decode(encode(pixel_values), cond)

  return with_text


def export_stablehlo(
  model,
  out_dir: str | os.PathLike,
  *,
  prompts: Sequence | None = None,
  image_size: int | None = None,
  platforms: Sequence[str] = PLATFORMS,
  overwrite: bool = False,
) -> Path:
  """Write `out_dir/model.jax_export` (a serialised `jax.export.Exported`, weights baked in) and
  `spec.json`; the batch (and without `prompts` the number of prompts and tokens) is symbolic, any
  size runs. `image_size`: the side the artifact takes (default: the model's own, `model.image_size`).
  Returns the folder."""
  from jax import export

  _check_target(out_dir, overwrite)
  if prompts is not None:
    prompts = list(prompts)
    if not prompts:
      raise ValueError("prompts: give at least one, or None to take token ids as inputs")
  if unknown := sorted(set(platforms) - set(KNOWN_PLATFORMS)):
    raise ValueError(f"unknown platform(s) {', '.join(unknown)}: choose from {', '.join(KNOWN_PLATFORMS)}")
  size = image_size or model.image_size
  model._check_pixels(np.zeros((1, size, size, 3), np.float32), "image_size")  # square, patch multiple
  fn = stablehlo_function(model, prompts)
  if prompts is not None:
    (b,) = export.symbolic_shape("batch")
    args = (jax.ShapeDtypeStruct((b, size, size, 3), jnp.float32),)
  else:  # one symbolic scope for all three
    b, p, l = export.symbolic_shape("batch, prompts, tokens", constraints=[f"tokens <= {MAX_LENGTH}"])
    ids = jax.ShapeDtypeStruct((p, l), jnp.int32)
    args = (jax.ShapeDtypeStruct((b, size, size, 3), jnp.float32), ids, ids)
  with jax.default_matmul_precision(_precision(model)):
    exported = export.export(jax.jit(fn), platforms=list(platforms))(*args)
  blob = exported.serialize()
  out = _prepare(out_dir, overwrite)
  (out / STABLEHLO_FILE).write_bytes(blob)
  extra = {
    "file": STABLEHLO_FILE,
    "bytes": len(blob),
    "platforms": list(exported.platforms),
    "jax_version": jax.__version__,
    "calling_convention_version": exported.calling_convention_version,
    "load": f"jax.export.deserialize(open('{STABLEHLO_FILE}', 'rb').read()).call(pixel_values"
    + (")" if prompts is not None else ", input_ids, attention_mask)"),
  }
  _write_spec(out, _spec(model, size, prompts, layout="NHWC", fmt="jax.export", extra=extra), model, prompts)
  return out


def load_stablehlo(path: str | os.PathLike):
  """(callable, spec) of an artifact folder written by `export_stablehlo` (needs jax only)."""
  from jax import export

  folder = Path(path)
  spec = read_spec(folder)
  if spec.get("format") != "jax.export":
    raise ValueError(f"{folder} holds a {spec.get('format')!r} artifact, not a jax.export one")
  exported = export.deserialize(bytearray((folder / spec["file"]).read_bytes()))
  return exported.call, spec


def tokens(model, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """(input_ids, attention_mask) int32 [P, L] for an artifact that takes prompts as token ids."""
  return tokenize(model.tokenizer, list(texts), model.config.text_config.max_position_embeddings)


# ---- ONNX through transformers' PyTorch model -----------------------------------------------------


def _torch_wrapper(hf, cond: np.ndarray | None):
  """transformers' model as (pixels NCHW [B, 3, S, S](, ids, mask [P, L])) -> logits [B, P, S, S]: one
  (image, prompt) pair per row of its batch, as it takes them."""
  import torch

  class Artifact(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.hf = hf
      if cond is not None:
        self.register_buffer("cond", torch.from_numpy(np.array(cond, np.float32)))  # a writable copy

    def forward(self, pixel_values, input_ids=None, attention_mask=None):
      if cond is not None:
        c = self.cond
      else:  # each prompt's text embedding once (what transformers computes per pair)
        c = self.hf.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output
      b, p, s = pixel_values.shape[0], c.shape[0], pixel_values.shape[-1]
      # Pairs image-major, by broadcasting (the exporter mishandles a dynamic repeat_interleave).
      pixels = pixel_values[:, None].expand(b, p, *pixel_values.shape[1:]).reshape(b * p, *pixel_values.shape[1:])
      pairs = c[None].expand(b, p, c.shape[-1]).reshape(b * p, c.shape[-1])
      return self.hf(pixel_values=pixels, conditional_embeddings=pairs).logits.reshape(b, p, s, s)

  return Artifact().eval()


def export_onnx(
  model,
  out_dir: str | os.PathLike,
  *,
  prompts: Sequence | None = None,
  image_size: int | None = None,
  opset: int = ONNX_OPSET,
  overwrite: bool = False,
) -> Path:
  """Write `out_dir/model.onnx` and `spec.json`: the model converted to transformers' PyTorch CLIPSeg
  (`export_hf`, eager attention) and exported by `torch.onnx.export`. NCHW pixels; dynamic batch (and
  prompts and tokens without `prompts`, whose embeddings are otherwise baked in). Returns the folder."""
  import torch
  from transformers import CLIPSegForImageSegmentation
  from transformers.utils import logging as hf_logging

  _check_target(out_dir, overwrite)
  size = image_size or model.image_size
  model._check_pixels(np.zeros((1, size, size, 3), np.float32), "image_size")
  cond = None if prompts is None else np.asarray(model.encode_prompts(list(prompts)), np.float32)
  with tempfile.TemporaryDirectory(prefix="clipseg_onnx_") as tmp:
    model.export_hf(tmp)
    hf_logging.disable_progress_bar()  # transformers' "Loading weights" bar says nothing here
    try:
      hf = CLIPSegForImageSegmentation.from_pretrained(tmp, attn_implementation="eager").eval()
    finally:
      hf_logging.enable_progress_bar()
  wrapper = _torch_wrapper(hf, cond)
  pixels = torch.zeros((2, 3, size, size), dtype=torch.float32)
  batch = torch.export.Dim("batch", min=1)
  if cond is None:
    ids, mask = (torch.from_numpy(a.astype(np.int64)) for a in tokens(model, ["a photo", "a cat on a mat"]))
    args, names = (pixels, ids, mask), ["pixel_values", "input_ids", "attention_mask"]
    p, l = torch.export.Dim("prompts", min=1), torch.export.Dim("tokens", min=2, max=MAX_LENGTH)
    shapes = {"pixel_values": {0: batch}, "input_ids": {0: p, 1: l}, "attention_mask": {0: p, 1: l}}
  else:
    args, names, shapes = (pixels,), ["pixel_values"], {"pixel_values": {0: batch}}
  with tempfile.TemporaryDirectory(prefix="clipseg_onnx_") as staging:  # an earlier artifact stays if this fails
    path = Path(staging) / ONNX_FILE
    registry = logging.getLogger("torch.onnx._internal.exporter._registration")  # "torchvision is not installed"
    level = registry.level
    with torch.no_grad(), warnings.catch_warnings():
      # torch's exporter warns about its own internals (pytree LeafSpec, axis renaming): nothing to act on
      warnings.filterwarnings("ignore", category=FutureWarning)
      warnings.filterwarnings("ignore", message=".*axis name.*")
      registry.setLevel(logging.ERROR)
      try:
        torch.onnx.export(
          wrapper,
          args,
          str(path),
          input_names=names,
          output_names=["logits"],
          dynamic_shapes=shapes,
          opset_version=opset,
          dynamo=True,
          external_data=False,
          verbose=False,
        )
      finally:
        registry.setLevel(level)
    out = _prepare(out_dir, overwrite)
    shutil.move(str(path), out / ONNX_FILE)
  path = out / ONNX_FILE
  extra = {
    "file": ONNX_FILE,
    "bytes": path.stat().st_size,
    "opset": opset,
    "torch_version": torch.__version__,
    "load": f"onnxruntime.InferenceSession('{ONNX_FILE}').run(['logits'], {{'pixel_values': pixel_values"
    + ("})" if prompts is not None else ", 'input_ids': ..., 'attention_mask': ...})"),
  }
  _write_spec(out, _spec(model, size, prompts, layout="NCHW", fmt="onnx", extra=extra), model, prompts)
  return out
