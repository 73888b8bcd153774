"""`ClipSeg`: the inference object (config + params + tokenizer, jitted stages, caches, `predict`).

Loading lives in `clipseg_jax.pretrained` (and `clipseg_jax.load_model`), writing in `clipseg_jax.export`."""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from clipseg_jax import export, preprocess
from clipseg_jax import prompts as prompt_lib
from clipseg_jax.config import ClipSegConfig
from clipseg_jax.models.clipseg import ClipSegModel
from clipseg_jax.tokenizer import load_tokenizer, tokenize
from clipseg_jax.weights import manifest as manifests

PREDICT_BATCH = 4  # query images per vision-tower call in `predict`
TOKEN_BUCKET = 8  # prompt lengths are padded to a multiple of this
# Prompts decoded together per step on CPU: the decoder's [prompts, tokens, 2048] MLP activations
# fall out of cache when many prompts go at once (measured: 16 ms/prompt one at a time, 33 ms at 32).
CPU_DECODE_CHUNK = 1
TEXT_CACHE_SIZE = 4096  # text embeddings kept per model (least recently used dropped first)


def bucket(n: int) -> int:
  """Counts are padded to 1, 2, 4, 8, then multiples of 8: jit compiles a few shapes, not one per
  count, and at most a quarter of the work is padding beyond 8."""
  return 1 << max(0, n - 1).bit_length() if n <= 8 else -(-n // 8) * 8


class _JitAt:
  """`jax.jit(fn)` traced and run under `jax.default_matmul_precision(precision)`, which is part of
  jit's cache key. `name` names the stage in JAX's logs (`jax.log_compiles()`: "clipseg_decode")."""

  def __init__(self, precision: str, name: str, fn):
    def stage(*args):
      return fn(*args)

    stage.__name__ = stage.__qualname__ = f"clipseg_{name}"
    self.precision, self.jitted = precision, jax.jit(stage)

  def __call__(self, *args):
    with jax.default_matmul_precision(self.precision):
      return self.jitted(*args)

  def lower(self, *args):
    with jax.default_matmul_precision(self.precision):
      return self.jitted.lower(*args)


@dataclasses.dataclass(eq=False)
class ClipSeg:
  """A CLIPSeg model: `.config` (HF CLIPSegConfig fields), `.params` (plain pytree), `.tokenizer`, and
  `.manifest` (what the model is: input size, visual prompt mode, prompt kinds, its CLIP, provenance;
  `weights.manifest`). `image_size`: the input size, overriding the manifest's (default: the manifest's,
  else 352)."""

  config: ClipSegConfig
  params: dict
  tokenizer: Any = None
  dtype: Any = jnp.float32
  image_size: int | None = None
  # Tensors of an original decoder file that the model does not use, written back by export_original.
  original_extras: dict = dataclasses.field(default_factory=dict, repr=False)
  manifest: manifests.Manifest | None = dataclasses.field(default=None, repr=False)

  def __setattr__(self, name, value):
    if name == "params":
      # Host (numpy) leaves would be copied again on every jitted call: all ~150M parameters of
      # ViT-B/16, 60 ms of each call on CPU. Device arrays already placed (sharded) stay as they are.
      value = jax.device_put(value)
    if self.__dict__.get("manifest") is not None and name in ("config", "image_size"):  # one record of both
      key = "architecture" if name == "config" else name
      super().__setattr__("manifest", self.manifest.replace(**{key: value}))
    super().__setattr__(name, value)

  @property
  def prompt_mode(self) -> str:
    """The visual prompt engineering the model was trained with (`prompts.MODES`), applied to supports."""
    return self.manifest.prompt_mode

  def __post_init__(self):
    # Facts older versions kept in config.extra move to the manifest; an explicit image_size wins.
    found = self.manifest or manifests.derive(self.config)
    size = self.image_size if self.image_size is not None else found.image_size
    self.config = manifests.without_legacy(self.config)
    self.manifest = found.replace(architecture=self.config, image_size=size)
    self.image_size = size
    prompt_lib.parse_mode(self.prompt_mode, size)  # an unknown mode: a clear error now, not at the first support
    if self.tokenizer is None:
      self.tokenizer = load_tokenizer()
    compute = None if jnp.dtype(self.dtype) == jnp.float32 else self.dtype
    self.module = ClipSegModel(self.config, compute)
    # float32 promises PyTorch's numbers, but JAX's default on GPUs runs float32 matmuls in TF32
    # (logits off by ~3e-4 on an H200, experiments/bench/parity.py): ask for full precision.
    jit = functools.partial(_JitAt, "highest" if compute is None else "default")
    apply = lambda name, method: jit(name, lambda params, *a: self.module.apply({"params": params}, *a, method=method))
    self._forward = jit("forward", lambda params, *a: self.module.apply({"params": params}, *a))
    self._logits = jit("logits", lambda params, *a: self.module.apply({"params": params}, *a)["logits"])
    self._encode_image = apply("encode_image", ClipSegModel.encode_image)
    self._text = apply("text", ClipSegModel.text_embeddings)
    self._visual = apply("visual", ClipSegModel.visual_embeddings)
    chunk = CPU_DECODE_CHUNK if jax.default_backend() == "cpu" else None
    self._decode = jit("decode", functools.partial(self._decode_impl, chunk=chunk))
    self._text_cache: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
    self._text_cache_params = None  # the params the cached embeddings were computed with

  # ---- the low-level call (HF semantics) --------------------------------------------------------

  def __call__(
    self,
    pixel_values,
    *,
    input_ids=None,
    attention_mask=None,
    conditional_pixel_values=None,
    conditional_embeddings=None,
  ) -> jax.Array:
    """Logits [B, H, W] for NHWC normalized `pixel_values` and one kind of condition per image."""
    args = self._check_inputs(pixel_values, input_ids, attention_mask, conditional_pixel_values, conditional_embeddings)
    return self._logits(self.params, *args)

  def forward(
    self,
    pixel_values,
    *,
    input_ids=None,
    attention_mask=None,
    conditional_pixel_values=None,
    conditional_embeddings=None,
  ) -> dict:
    """Like `__call__` but returns HF's outputs: logits, conditional_embeddings, pooled_output."""
    args = self._check_inputs(pixel_values, input_ids, attention_mask, conditional_pixel_values, conditional_embeddings)
    return self._forward(self.params, *args)

  def _decode_impl(self, params, reduced, cond, count, *, chunk=None):
    """reduced: per layer [N, T, D]; cond [P, E], of which the first `count` are real, the rest bucket
    padding -> logits [N, P, S, S]. With `chunk`, a loop decodes `chunk` prompts at a time and stops
    after the real ones (their logits are left zero): padding 5 prompts to 8 costs nothing."""
    decode = lambda c: self.module.apply(
      {"params": params}, [r[:, None] for r in reduced], c[None], method=ClipSegModel.decode
    )
    if chunk is None or cond.shape[0] <= chunk:
      return decode(cond)

    def body(i, out):
      logits = decode(jax.lax.dynamic_slice_in_dim(cond, i * chunk, chunk))  # [N, chunk, S, S]
      return jax.lax.dynamic_update_slice_in_dim(out, logits, i * chunk, axis=1)

    one = jax.eval_shape(decode, cond[:chunk])  # [N, chunk, S, S]
    out = jnp.zeros((one.shape[0], cond.shape[0], *one.shape[2:]), one.dtype)
    return jax.lax.fori_loop(0, -(-count // chunk), body, out)

  def _check_inputs(self, pixel_values, input_ids, attention_mask, cond_pixels, cond_embeddings):
    pixel_values = self._check_pixels(pixel_values, "pixel_values")
    b = pixel_values.shape[0]
    given = [
      name
      for name, x in (
        ("input_ids", input_ids),
        ("conditional_pixel_values", cond_pixels),
        ("conditional_embeddings", cond_embeddings),
      )
      if x is not None
    ]
    if len(given) != 1:
      raise ValueError(
        "pass exactly one of input_ids, conditional_pixel_values, conditional_embeddings"
        + (f" (got {', '.join(given)})" if given else "")
      )
    if input_ids is not None:
      input_ids = jnp.asarray(input_ids, jnp.int32)
      if input_ids.ndim != 2 or input_ids.shape[0] != b:
        raise ValueError(f"input_ids must be [{b}, L] (one prompt per image), got {input_ids.shape}")
      if attention_mask is not None:
        attention_mask = jnp.asarray(attention_mask, jnp.int32)
        if attention_mask.shape != input_ids.shape:
          raise ValueError(f"attention_mask {attention_mask.shape} != input_ids {input_ids.shape}")
    if cond_pixels is not None:
      cond_pixels = self._check_pixels(cond_pixels, "conditional_pixel_values")
      if cond_pixels.shape[0] != b:
        raise ValueError(f"{cond_pixels.shape[0]} prompt images for {b} query images")
    if cond_embeddings is not None:
      cond_embeddings = jnp.asarray(cond_embeddings, jnp.float32)
      if cond_embeddings.shape != (b, self.config.projection_dim):
        raise ValueError(
          f"conditional_embeddings must be [{b}, {self.config.projection_dim}], got {cond_embeddings.shape}"
        )
    return pixel_values, input_ids, attention_mask, cond_pixels, cond_embeddings

  def _check_pixels(self, x, name):
    x = jnp.asarray(x, jnp.float32)
    v = self.config.vision_config
    if x.ndim != 4 or x.shape[-1] != v.num_channels:
      raise ValueError(f"{name} must be NHWC with {v.num_channels} channels, got shape {x.shape}")
    h, w = x.shape[1:3]
    if h != w or h % v.patch_size:
      raise ValueError(
        f"{name} must be square with a side divisible by the patch size {v.patch_size} "
        f"(the decoder reshapes tokens to a square grid), got {h}x{w}; resize first "
        f"(e.g. clipseg_jax.preprocess.pixels)"
      )
    return x

  # ---- stages (functional building blocks for predict, evaluation, training) --------------------

  def encode_text(self, texts: Sequence[str], *, templates: Sequence[str] | None = None) -> jax.Array:
    """[P, E] CLIP text embeddings of the raw strings; repeated prompts come from a cache. With
    `templates` ("a photo of a {}.", ...) each prompt's embedding is the mean over its templates, as in
    CLIP's zero-shot prompt ensembles; the raw embeddings are averaged (not unit-normalised first):
    FiLM is linear in them, so this averages the templates' modulations."""
    texts = list(texts)
    if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
      raise ValueError(f"text prompts must be non-empty strings, got {texts!r}")
    if templates is not None:
      filled = prompt_lib.fill_templates(texts, templates)
      per_text = len(filled) // len(texts)
      return self.encode_text(filled).reshape(len(texts), per_text, -1).mean(1)
    cache = self._text_cache
    if self._text_cache_params is not self.params:  # new weights: old embeddings are stale
      cache.clear()
      self._text_cache_params = self.params
    missing = list(dict.fromkeys(t for t in texts if t not in cache))
    if missing:
      cache.update(zip(missing, np.asarray(self._encode_text_uncached(missing))))
    for t in texts:
      cache.move_to_end(t)
    while len(cache) > TEXT_CACHE_SIZE:
      cache.popitem(last=False)
    return jnp.asarray(np.stack([cache[t] for t in texts]))

  def _encode_text_uncached(self, texts: list[str]) -> jax.Array:
    ids, mask = tokenize(self.tokenizer, texts, self.config.text_config.max_position_embeddings, multiple=TOKEN_BUCKET)
    rows = ((0, bucket(len(texts)) - len(texts)), (0, 0))  # bucket padding: copies of the last prompt
    ids, mask = np.pad(ids, rows, mode="edge"), np.pad(mask, rows, mode="edge")
    return self._text(self.params, jnp.asarray(ids), jnp.asarray(mask))[: len(texts)]

  def encode_visual(self, pairs: Sequence[tuple[Any, Any]]) -> jax.Array:
    """[P, E] embeddings of (support image, support mask) pairs after the visual prompt engineering the
    model was trained with (`prompt_mode`; normalised pixels: the vision tower takes them as they are)."""
    supports = [self.support_pixels(image, mask) for image, mask in pairs]
    return self._visual(self.params, jnp.asarray(np.stack(supports)))

  def support_pixels(self, image, mask) -> np.ndarray:
    """A visual prompt as the vision tower sees it: normalised pixels [S, S, 3] (`preprocess.denormalize`
    turns them into a picture). The one place the visual prompt's mode applies."""
    return prompt_lib.visual_prompt(image, mask, self.prompt_mode, self.image_size)

  def encode_prompts(self, prompts: Sequence, *, templates: Sequence[str] | None = None) -> jax.Array:
    """Strings, (image, mask) pairs and `prompts.Mixed`, in order -> [P, E]; `templates`: a prompt
    ensemble for the texts (`encode_text`)."""
    prompts = list(prompts)
    if not prompts:
      raise ValueError("no prompts given")
    texts, pairs, weights = [], [], []  # per prompt: a text and/or a pair, and the text's weight
    for i, p in enumerate(prompts):
      if isinstance(p, str):
        texts.append(p), pairs.append(None), weights.append(1.0)
      elif isinstance(p, prompt_lib.Mixed):
        texts.append(p.text), pairs.append((p.image, p.mask)), weights.append(p.text_weight)
      elif isinstance(p, (tuple, list)) and len(p) == 2:
        texts.append(None), pairs.append(tuple(p)), weights.append(0.0)
      else:
        raise ValueError(
          f"prompt {i} must be a string, a (support_image, support_mask) pair or a "
          f"prompts.Mixed, got {type(p).__name__}"
        )
    e = self.config.projection_dim
    if self.manifest.withhold_prompt:  # the ablation's decoder never saw a prompt: it gets none (zeros)
      return jnp.zeros((len(prompts), e), jnp.float32)
    text, visual = np.zeros((len(prompts), e), np.float32), np.zeros((len(prompts), e), np.float32)
    if t_idx := [i for i, t in enumerate(texts) if t is not None]:
      text[t_idx] = np.asarray(self.encode_text([texts[i] for i in t_idx], templates=templates))
    if v_idx := [i for i, q in enumerate(pairs) if q is not None]:
      visual[v_idx] = np.asarray(self.encode_visual([pairs[i] for i in v_idx]))
    return prompt_lib.interpolate(jnp.asarray(text), jnp.asarray(visual), np.asarray(weights, np.float32))

  def encode_images(self, pixel_values) -> list[jax.Array]:
    """Query pixels [N, S, S, 3] -> reduced decoder inputs; the only place predict runs the vision tower."""
    pixel_values = self._check_pixels(pixel_values, "pixel_values")
    n = pixel_values.shape[0]
    padded = jnp.pad(pixel_values, ((0, bucket(n) - n), (0, 0), (0, 0), (0, 0)))
    return [r[:n] for r in self._encode_image(self.params, padded)]

  def decode(self, reduced, cond) -> jax.Array:
    """Reduced inputs of N images x [P, E] conditions -> logits [N, P, S, S]."""
    cond = jnp.asarray(cond)
    p = cond.shape[0]
    cond = jnp.pad(cond, ((0, bucket(p) - p), (0, 0)))
    return self._decode(self.params, list(reduced), cond, jnp.int32(p))[:, :p]

  # ---- for people -------------------------------------------------------------------------------

  def predict(
    self,
    images,
    prompts,
    *,
    threshold: float | None = None,
    batch_size: int = PREDICT_BATCH,
    templates: Sequence[str] | None = None,
  ) -> np.ndarray:
    """[n_images, n_prompts, H, W] probabilities (bool masks with `threshold`) at each image's own
    size; all images must then share a size, else a list of [n_prompts, H_i, W_i] is returned.
    `templates`: average each text prompt's embedding over these ("a photo of a {}.", ...).
    Each image goes through the vision tower once, whatever the number of prompts. Maps are resized
    back with torch-style bilinear interpolation, align_corners=False, as transformers/HF pipelines
    post-process (the paper's evaluation uses align_corners=True: `predict_conditions(...,
    align_corners=True)`, as `evaluation.protocols` does)."""
    images = list(images) if isinstance(images, (list, tuple)) else [images]
    if isinstance(prompts, str) or (
      isinstance(prompts, tuple) and len(prompts) == 2 and not isinstance(prompts[0], str)
    ):
      prompts = [prompts]
    cond = self.encode_prompts(prompts, templates=templates)
    return self.predict_conditions(images, cond, threshold=threshold, batch_size=batch_size)

  def predict_conditions(
    self, images, cond, *, threshold: float | None = None, batch_size: int = PREDICT_BATCH, align_corners: bool = False
  ):
    """`predict` with precomputed [P, E] conditions (e.g. interpolated text/visual embeddings).
    align_corners: of the bilinear resize to each image's size (True: as the original evaluation)."""
    outs = self.predict_iter(images, cond, threshold=threshold, batch_size=batch_size, align_corners=align_corners)
    outputs = [out["masks"] for out in outs]
    if not outputs:
      raise ValueError("no images given")
    if len({o.shape for o in outputs}) == 1:
      return np.stack(outputs)
    return outputs

  def predict_iter(
    self,
    images: Iterable,
    cond,
    *,
    threshold: float | None = None,
    batch_size: int = PREDICT_BATCH,
    align_corners: bool = False,
  ) -> Iterator[dict]:
    """Per image, in order: {"masks": [P, H, W] probabilities (bools with `threshold`) at the image's
    size, "logits": [P, S, S] raw logits at the model's resolution}. Images are read `batch_size` at a
    time from any iterable (a generator of files, say); larger than `preprocess.MAX_SIDE`, downscaled.
    align_corners: of the bilinear resize to the image's size (`preprocess.resize_map`)."""
    preprocess.check_threshold(threshold)
    preprocess.check_batch_size(batch_size)
    # checked before any work
    return self._predict_chunks(iter(images), cond, threshold, batch_size, align_corners=align_corners)

  def _predict_chunks(self, images, cond, threshold, batch_size, *, align_corners: bool = False):
    for chunk in preprocess.batches(images, batch_size):
      reduced = self.encode_images(preprocess.batch_pixels(chunk, self.image_size))
      logits = np.asarray(self.decode(reduced, cond), np.float32)
      for im, lg in zip(chunk, logits):
        probs = preprocess.resize_map(preprocess.sigmoid(lg), im.height, im.width, align_corners=align_corners)
        yield {"masks": probs > threshold if threshold is not None else probs, "logits": lg}

  # ---- prompt algebra, label maps (clipseg_jax.algebra, clipseg_jax.labelmap) ---------------------

  def predict_expressions(self, images, expressions, **options):
    """`predict` for prompt expressions (`"head" - "ear"`, `"a cat" | "a dog"`, `"x" & $ref` with
    `operands={"ref": (image, mask)}`; plain strings and visual pairs are prompts as in `predict`) ->
    [n_images, n_expressions, H, W]; one vision pass per image, all leaves in one decode, combined in a jitted
    function (semantics and options, e.g. logic="fuzzy"|"product": `clipseg_jax.algebra`)."""
    from clipseg_jax import algebra

    return algebra.predict_expressions(self, images, expressions, **options)

  def predict_expression(self, images, expression, **options):
    """One expression -> [n_images, H, W] (a list of [H_i, W_i] when sizes differ)."""
    out = self.predict_expressions(images, [expression], **options)
    return out[:, 0] if isinstance(out, np.ndarray) else [o[0] for o in out]

  def predict_label_map(self, images, prompts, *, thresholds=0.5, **options):
    """uint8 label maps [n_images, H, W]: 0 background, i = prompts[i - 1] (argmax over the prompts whose
    probability exceeds its threshold: `clipseg_jax.labelmap`); prompts may be expressions."""
    from clipseg_jax import labelmap

    return labelmap.predict_label_maps(self, images, list(prompts), thresholds=thresholds, **options)

  # ---- writing (clipseg_jax.export) --------------------------------------------------------------

  def export_hf(self, out_dir: str | os.PathLike, **options):
    """An HF directory transformers' `CLIPSegProcessor` + `CLIPSegForImageSegmentation` load, with a model
    card; options: `export.export_hf` (evaluation=, name=, license=)."""
    return export.export_hf(self, out_dir, **options)

  def export_original(self, path: str | os.PathLike):
    """The decoder as a state dict in the original `.pth` layout (q/k/v fused), the CLIP it needs named
    in a `<path>.json` sidecar."""
    return export.export_original(self, path)

  def save(self, out_dir: str | os.PathLike, **options):
    """This project's Flax checkpoint: `config.json` + Orbax `params/` (+ tokenizer, model card)."""
    return export.save(self, out_dir, **options)

  def push_to_hub(self, repo_id: str, **options) -> str:
    """Upload this model with its card to the Hub repository `repo_id`; options: `export.push_to_hub`
    (format="hf"|"flax", private=, revision=, token=, commit_message=, evaluation=). Returns the commit URL."""
    return export.push_to_hub(self, repo_id, **options)
