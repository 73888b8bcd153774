"""A Gradio app for CLIPSeg: text prompts, visual prompts painted in an image editor, and the two mixed.

`build_app(model)` returns the `gr.Blocks`; `launch()` loads a checkpoint (the embedded model by default),
builds the app and serves it (with a public share link in Colab). The work itself (`Segmenter`) needs no
gradio, so it is tested by calling it; gradio is imported only by `build_app` and `launch` (extra `[demo]`).

What a client can spend is bounded (`AppLimits`): upload bytes, the query's pixels (read from its header
before decoding), the longer side images are downscaled to, the number and length of prompts, and the
queue (its size, and how many requests run at once; the model is called one request at a time).
"""

from __future__ import annotations

import collections
import dataclasses
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
import warnings
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageColor

from clipseg_jax import preprocess, visualize
from clipseg_jax.prompts import Mixed
from clipseg_jax.web.server import check_pixels, check_positive, read_image, release_memory

DEFAULT_CHECKPOINT = "embedded:synthetic"  # the embedded trained CLIPSeg: offline, no download
DEFAULT_THRESHOLD = 0.5
SOFT = 0.0  # the threshold slider's value meaning "show probabilities, no threshold"
DEFAULT_TEXT_WEIGHT = 0.5  # of a mixed prompt: w * text + (1 - w) * visual
SLIDER_STEP = 0.05
MB = 1 << 20
VISUAL_LABEL = "visual prompt"
PROMPT_SPLIT = re.compile(r"[\n,]")  # prompts: one per line, or comma separated
BRUSH_COLOR = "#ff00ff"  # the painted mask is the layer's alpha; the colour only shows it
# Brush diameter (px of the support image). gradio's "auto" brush is so wide that masks spill past the
# object, and a spilled visual prompt finds little (1% of the object against 9% painted tightly).
BRUSH_SIZE = 8
KEEP_RESULTS = 32  # request folders of mask downloads kept (gradio copies outputs into its own cache)
CACHE_CLEANUP_S = (3600, 3600)  # gradio's delete_cache: every hour, remove its cached files older than an hour
WARM_UP_SIZE = 64  # the tiny image compiled at start (text and visual stages)
IMAGE_HEIGHT = 300  # display heights (px) of the query, support editor and result, to keep the page compact
EDITOR_HEIGHT = 380
RESULT_HEIGHT = 460
EXAMPLE_SIZE = 256  # side of the synthetic example scenes (the embedded model trained on such scenes)
EXAMPLE_SEEDS = (3, 11)  # scenes for the examples (deterministic)
SUPPORT_SEARCH = 200  # seeds tried for a support scene holding an object like the query's


@dataclasses.dataclass(frozen=True)
class AppLimits:
  """What clients can make the app spend; `clipseg-jax demo-app` has a flag for each field."""

  max_upload_bytes: int = dataclasses.field(default=20 << 20, metadata={"help": "largest uploaded file (bytes)"})
  max_pixels: int = dataclasses.field(
    default=40_000_000, metadata={"help": "largest query image (width*height from its header, before decoding)"}
  )
  max_side: int = dataclasses.field(
    default=1024, metadata={"help": "query and support images are downscaled to this longer side first"}
  )
  max_prompts: int = dataclasses.field(
    default=len(visualize.PALETTE), metadata={"help": "prompts per request (text and visual together)"}
  )
  max_prompt_chars: int = dataclasses.field(default=300, metadata={"help": "characters per text prompt"})
  queue_size: int = dataclasses.field(default=16, metadata={"help": "requests waiting in gradio's queue"})
  concurrency: int = dataclasses.field(default=1, metadata={"help": "requests processed at once"})

  def __post_init__(self):
    check_positive(self)


class InputError(ValueError):
  """A request the app refuses; the page shows its message."""


def split_prompts(text: str | None) -> list[str]:
  """Text prompts typed one per line or comma separated -> stripped, non-empty, first occurrences only."""
  return list(dict.fromkeys(p.strip() for p in PROMPT_SPLIT.split(text or "") if p.strip()))


def painted_mask(layers, shape: tuple[int, int]) -> np.ndarray:
  """The union of the editor's painted layers (their alpha, or any colour for layers without one) -> bool
  [H, W] at `shape` (nearest, should the canvas differ from the background)."""
  mask = np.zeros(shape, bool)
  for layer in layers or []:
    layer = as_array(layer)
    if layer.ndim == 3 and layer.shape[-1] == 4:
      painted = layer[..., 3] > 0
    else:
      painted = layer.reshape(layer.shape[:2] + (-1,)).any(-1)
    mask |= painted if painted.shape == shape else _resize_mask(painted, shape)
  return mask


def as_array(image) -> np.ndarray:
  """An image as the editor or a Python caller gives it (array, PIL image or file path) -> array."""
  if isinstance(image, (str, Path)):
    with Image.open(image) as im:
      return np.asarray(im)
  return np.asarray(image)


def check_editor_file(file, max_pixels: int, what: str = "the support image"):
  """An image the editor uploaded (a path, gradio's FileData or bytes), refused from its header when it
  would decode to more than `max_pixels`: gradio decodes the editor's images before the app sees them."""
  path = getattr(file, "path", file)
  raw = bytes(path) if isinstance(path, (bytes, bytearray, memoryview)) else Path(path).read_bytes()
  try:
    check_pixels(raw, max_pixels)
  except ValueError as e:
    raise InputError(f"{what}: {e}") from None


def bound_editor(gr, editor, max_pixels: int):
  """`editor` (a gr.ImageEditor) with its uploads (background, layers, composite) checked by
  `check_editor_file` before gradio decodes them. The instance's method is wrapped: a subclass would
  make gradio write a `.pyi` stub beside this module."""
  convert = editor.convert_and_format_image

  def convert_and_format_image(file, *args, **kwargs):
    if file is not None:
      try:
        check_editor_file(file, max_pixels)
      except InputError as e:
        raise gr.Error(str(e), print_exception=False) from None
    return convert(file, *args, **kwargs)

  editor.convert_and_format_image = convert_and_format_image
  return editor


def _resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(shape[::-1], Image.NEAREST)) > 0


def unique_labels(labels: list[str]) -> list[str]:
  """Labels key the result's layers and colours: repeated ones get a number."""
  seen: collections.Counter = collections.Counter()
  out = []
  for label in labels:
    seen[label] += 1
    out.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
  return out


def hex_color(i: int) -> str:
  r, g, b = (int(c) for c in visualize.PALETTE[i % len(visualize.PALETTE)])
  return f"#{r:02x}{g:02x}{b:02x}"


@dataclasses.dataclass
class Result:
  """One request's answer: the query image, one (mask, label) layer per prompt, their colours, the
  downloadable files (a zip first, then a PNG per prompt) and notes for people."""

  image: np.ndarray
  layers: list[tuple[np.ndarray, str]]
  colors: dict[str, str]
  files: list[str]
  notes: str


class Segmenter:
  """The app's work, without gradio: checks a request, runs the model (one call at a time) and writes
  the mask downloads under `out_dir` (the last KEEP_RESULTS requests are kept)."""

  def __init__(self, model, limits: AppLimits | None = None, out_dir: str | Path | None = None, warm_up: bool = True):
    self.model = model
    self.limits = limits or AppLimits()
    self.out_dir = Path(out_dir or tempfile.mkdtemp(prefix="clipseg-gradio-"))
    self.out_dir.mkdir(parents=True, exist_ok=True)
    self.lock = threading.Lock()
    self.recent: collections.deque[Path] = collections.deque()
    if warm_up:  # compile the text and the visual stages before the first visitor
      blank = np.zeros((WARM_UP_SIZE, WARM_UP_SIZE, 3), np.uint8)
      support = np.ones((WARM_UP_SIZE, WARM_UP_SIZE), bool)
      model.predict(blank, ["warm-up", (blank, support)])

  @property
  def max_side(self) -> int:
    return min(self.limits.max_side, preprocess.MAX_SIDE)

  def read_query(self, path) -> tuple[Image.Image, list[str]]:
    """The query image file -> RGB within max_side, notes; its pixel count is checked before decoding."""
    if not path:
      raise InputError("choose an image to segment")
    path = Path(path)
    if path.stat().st_size > self.limits.max_upload_bytes:
      raise InputError(f"the image file is larger than {self.limits.max_upload_bytes / MB:.3g} MB")
    raw = path.read_bytes()
    try:
      check_pixels(raw, self.limits.max_pixels)
      return read_image(raw, self.max_side)  # large JPEGs are decoded at reduced scale directly
    except ValueError as e:
      raise InputError(str(e)) from e

  def _decode(self, image, what: str) -> tuple[Image.Image, list[str]]:
    """An image already decoded (the editor's support) -> RGB within max_side, notes."""
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      try:
        image = preprocess.limit_size(preprocess.to_rgb(image), self.max_side, what)
      except (OSError, ValueError) as e:
        raise InputError(f"cannot read {what}: {e}") from e
    return image, [str(w.message) for w in caught]

  def read_support(self, editor) -> tuple[Image.Image, np.ndarray, list[str]] | None:
    """The image editor's value ({"background", "layers", "composite"}) -> (support image, painted mask,
    notes), or None when no support image was given."""
    if not editor or editor.get("background") is None:
      if editor and any(as_array(x).any() for x in editor.get("layers") or []):
        raise InputError("the visual prompt is painted without a support image: upload one first")
      return None
    for x in [editor["background"], *(editor.get("layers") or [])]:
      if isinstance(x, (str, Path)):  # files (examples, API callers): checked before decoding
        check_editor_file(x, self.limits.max_pixels)
      elif np.asarray(x).shape[0] * np.asarray(x).shape[1] > self.limits.max_pixels:
        raise InputError(f"the support image is larger than {self.limits.max_pixels / 1e6:g} megapixels")
    background = Image.fromarray(as_array(editor["background"]))
    mask = painted_mask(editor.get("layers"), (background.height, background.width))
    if not mask.any():
      raise InputError("the support image has no painted mask: paint the object with the brush (or clear it)")
    image, notes = self._decode(background, "the support image")
    if image.size != background.size:
      mask = _resize_mask(mask, (image.height, image.width))
    if not mask.any():
      raise InputError("the painted mask vanished when the support image was downscaled: paint a larger area")
    return image, mask, notes

  def prompts(self, text, support, mix_text, text_weight) -> tuple[list, list[str]]:
    """-> (prompts for ClipSeg.predict, their labels)."""
    texts, mix_text = split_prompts(text), (mix_text or "").strip()
    for t in texts + ([mix_text] if mix_text else []):
      if len(t) > self.limits.max_prompt_chars:
        raise InputError(f"a prompt is longer than {self.limits.max_prompt_chars} characters: {t[:40]!r}...")
    prompts, labels = list(texts), list(texts)
    if support is not None:
      image, mask = support
      if mix_text:
        w = float(text_weight)
        if not 0.0 <= w <= 1.0:
          raise InputError(f"the text weight must be in [0, 1], got {w}")
        prompts.append(Mixed(mix_text, np.asarray(image), mask, text_weight=w))
        labels.append(f"{mix_text} + {VISUAL_LABEL} (text weight {w:.2f})")
      else:
        prompts.append((np.asarray(image), mask))
        labels.append(VISUAL_LABEL)
    elif mix_text:
      raise InputError("a text to mix with the visual prompt needs a support image with a painted mask")
    if not prompts:
      raise InputError("enter a text prompt or paint a visual prompt")
    if len(prompts) > self.limits.max_prompts:
      raise InputError(f"{len(prompts)} prompts; the limit is {self.limits.max_prompts}")
    return prompts, unique_labels(labels)

  def __call__(self, image, text, support=None, mix_text="", text_weight=DEFAULT_TEXT_WEIGHT, threshold=None):
    """One request: the query image's file path, text prompts, the editor's value, a text to mix into
    the visual prompt with its weight, and a threshold (None or SOFT: probabilities) -> Result."""
    threshold = None if threshold is None or float(threshold) <= SOFT else float(threshold)
    if threshold is not None and threshold > 1.0:
      raise InputError(f"the threshold must be in [0, 1], got {threshold}")
    try:
      return self._segment(image, text, support, mix_text, text_weight, threshold)
    finally:
      release_memory()  # large decodes are handed back to the OS, as the server does

  def _segment(self, image, text, support, mix_text, text_weight, threshold) -> Result:
    query, notes = self.read_query(image)
    pair = self.read_support(support)
    if pair is not None:
      notes += pair[2]
    prompts, labels = self.prompts(text, pair[:2] if pair else None, mix_text, text_weight)
    start = time.perf_counter()
    with self.lock:
      probs = self.model.predict(query, prompts)[0]
    seconds = time.perf_counter() - start
    masks = probs if threshold is None else (probs > threshold).astype(np.float32)
    files = self.write(query, masks, labels)
    coverage = ", ".join(f"{label}: {m.mean():.0%}" for label, m in zip(labels, masks))
    what = "probabilities" if threshold is None else f"masks at threshold {threshold:g}"
    lines = [f"{len(prompts)} prompt(s) in {seconds:.2f} s ({what}; area {coverage})"] + notes
    return Result(
      image=np.asarray(query),
      layers=list(zip(masks, labels)),
      colors={label: hex_color(i) for i, label in enumerate(labels)},
      files=files,
      notes="\n\n".join(lines),
    )

  def write(self, image: Image.Image, masks: np.ndarray, labels: list[str]) -> list[str]:
    """Mask PNGs (one per prompt) and a zip of them with the overlay, in a fresh folder; old ones pruned."""
    folder = self.out_dir / uuid.uuid4().hex
    folder.mkdir()
    pngs = []
    for i, (mask, label) in enumerate(zip(masks, labels)):
      path = folder / f"{i:02d}_{visualize.slug(label)}_mask.png"
      visualize.mask_image(mask).save(path)
      pngs.append(path)
    overlay = folder / "overlay.png"
    visualize.overlay(image, masks, labels).save(overlay)
    archive = folder / "clipseg_masks.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
      for path in [*pngs, overlay]:
        z.write(path, path.name)
    self.recent.append(folder)
    while len(self.recent) > KEEP_RESULTS:
      shutil.rmtree(self.recent.popleft(), ignore_errors=True)
    return [str(archive)] + [str(p) for p in pngs]


def example_inputs(folder: Path) -> list[list]:
  """Examples that run offline on the embedded model: synthetic scenes written as PNGs under `folder`,
  each with text prompts naming two of its objects and a support scene whose like object is painted."""
  from clipseg_jax.input_pipeline.synthetic import make_scene, phrases_for

  folder.mkdir(parents=True, exist_ok=True)
  examples = []
  for seed in EXAMPLE_SEEDS:
    image, objects = make_scene(np.random.default_rng(seed), EXAMPLE_SIZE)
    texts = [phrases_for(o, objects)[0] for o in objects[:2]]
    query = folder / f"scene_{seed}.png"
    Image.fromarray(image).save(query)
    target = objects[-1]
    for s in range(seed + 1, seed + 1 + SUPPORT_SEARCH):  # a scene holding an object like the target
      support, others = make_scene(np.random.default_rng(s), EXAMPLE_SIZE)
      like = [o for o in others if (o.color, o.shape) == (target.color, target.shape) and o.mask.any()]
      if like:
        break
    else:
      support, like = image, [target]
    paint = ImageColor.getrgb(BRUSH_COLOR)
    layer = np.zeros(support.shape[:2] + (4,), np.uint8)
    layer[like[0].mask] = (*paint, 255)
    composite = support.copy()
    composite[like[0].mask] = paint  # the editor shows an example's paint only through its composite
    editor = {}
    for key, pixels in (("background", support), ("layers", layer), ("composite", composite)):
      path = folder / f"support_{seed}_{key}.png"
      Image.fromarray(pixels).save(path)
      editor[key] = [str(path)] if key == "layers" else str(path)
    examples.append([str(query), "\n".join(texts), editor, f"{target.color} {target.shape}", DEFAULT_TEXT_WEIGHT])
  return examples


def build_app(model, *, name: str = "", limits: AppLimits | None = None, examples: bool = True, segmenter=None):
  """The Gradio app (gr.Blocks) for `model`; `name` (the checkpoint) is shown on the page."""
  import gradio as gr

  segmenter = segmenter or Segmenter(model, limits)
  limits = segmenter.limits

  def run(image, text, support, mix_text, text_weight, threshold):
    try:
      r = segmenter(image, text, support, mix_text, text_weight, threshold)
    except InputError as e:
      raise gr.Error(str(e), print_exception=False) from e
    return gr.AnnotatedImage(value=(r.image, r.layers), color_map=r.colors), r.files, r.notes

  # Analytics off: the app sends nothing to gradio's servers (and works offline).
  with gr.Blocks(title="CLIPSeg (JAX)", delete_cache=CACHE_CLEANUP_S, analytics_enabled=False) as app:
    gr.Markdown(
      "# CLIPSeg in JAX\nSegment what a phrase names, or what an example shows: upload a support image "
      "and paint the object on it. " + (f"Model: `{name}`." if name else "")
    )
    with gr.Row():
      with gr.Column():
        image = gr.Image(
          type="filepath", label="Image", sources=["upload", "clipboard"], height=IMAGE_HEIGHT, elem_id="query"
        )
        text = gr.Textbox(
          label="Text prompts", info="one per line, or separated by commas", lines=3, elem_id="text-prompts"
        )
        with gr.Accordion("Visual prompt", open=True):
          support = gr.ImageEditor(
            label="Support image: upload it, then paint inside the object with the brush (stay within its edges)",
            type="numpy",
            image_mode="RGBA",
            sources=["upload", "clipboard"],
            brush=gr.Brush(default_size=BRUSH_SIZE, colors=[BRUSH_COLOR], color_mode="fixed"),
            transforms=(),
            height=EDITOR_HEIGHT,
            elem_id="support",
          )
          bound_editor(gr, support, limits.max_pixels)  # the support image's size is checked before decoding
          mix_text = gr.Textbox(label="Text to mix into the visual prompt (optional)", elem_id="mix-text")
          text_weight = gr.Slider(
            0, 1, DEFAULT_TEXT_WEIGHT, step=SLIDER_STEP, label="Text weight of the mix", elem_id="text-weight"
          )
        threshold = gr.Slider(
          0,
          1,
          DEFAULT_THRESHOLD,
          step=SLIDER_STEP,
          label="Threshold",
          info="0: show probabilities",
          elem_id="threshold",
        )
        button = gr.Button("Segment", variant="primary", elem_id="run")
      with gr.Column():
        result = gr.AnnotatedImage(
          label="Result: one layer per prompt", height=RESULT_HEIGHT, format="png", elem_id="result"
        )
        files = gr.File(label="Masks (PNG, and all of them in a zip)", file_count="multiple", elem_id="masks")
        notes = gr.Markdown(elem_id="notes")
    inputs = [image, text, support, mix_text, text_weight, threshold]
    button.click(run, inputs, [result, files, notes], api_name="segment", concurrency_limit=limits.concurrency)
    if examples:
      rows = example_inputs(segmenter.out_dir / "examples")
      gr.Examples(rows, inputs[:-1], label="Examples (synthetic scenes)", elem_id="examples")
  app.queue(max_size=limits.queue_size, default_concurrency_limit=limits.concurrency)
  return app


def in_colab() -> bool:
  return "google.colab" in sys.modules


def launch(
  model=None,
  *,
  checkpoint: str = DEFAULT_CHECKPOINT,
  clip=None,
  dtype=None,
  host: str | None = None,
  port: int | None = None,
  share: bool | None = None,
  limits: AppLimits | None = None,
  **launch_kwargs,
):
  """Load `checkpoint` (unless `model` is given), build the app and serve it. share=None: a public link
  in Colab only. host/port None: gradio's defaults (GRADIO_SERVER_NAME/PORT, as a Hugging Face Space sets)."""
  if model is None:
    import jax.numpy as jnp

    from clipseg_jax import load_model

    model = load_model(checkpoint, clip=clip, dtype=dtype or jnp.float32)
  limits = limits or AppLimits()
  app = build_app(model, name=str(checkpoint), limits=limits)
  return app.launch(
    server_name=host,
    server_port=port,
    share=in_colab() if share is None else share,
    max_file_size=limits.max_upload_bytes,
    **launch_kwargs,
  )
