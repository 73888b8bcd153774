"""A Gradio app for CLIPSeg: text prompts, visual prompts painted in an image editor, and the two mixed.

`build_app(model)` returns the `gr.Blocks`; `launch()` loads a checkpoint (the embedded model by default),
builds the app and serves it (with a public share link in Colab). The work itself (`AppSegmenter`, and its
inputs in web/app_inputs.py) needs no gradio, so it is tested by calling it; gradio is imported only by
`build_app` and `launch` (extra `[demo]`).

What a client can spend is bounded (`AppLimits`, web/limits.py): upload bytes, the query's pixels (read
from its header before decoding: web/uploads.py), the longer side images are downscaled to, the number and
length of prompts, and the queue (its size, and how many requests run at once; the model is called one
request at a time).
"""

from __future__ import annotations

import collections
import dataclasses
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
from PIL import Image

from clipseg_jax import algebra, instances, labelmap, preprocess, visualize
from clipseg_jax.prompts import Mixed
from clipseg_jax.web.app_inputs import (
  BRUSH_COLOR,
  DEFAULT_TEXT_WEIGHT,
  InputError,
  as_array,
  bound_editor,
  check_editor_file,
  example_inputs,
  painted_mask,
  resize_mask,
  split_prompts,
)
from clipseg_jax.web.limits import AppLimits
from clipseg_jax.web.uploads import check_pixels, decode_upload
from clipseg_jax.web.workers import release_memory
from clipseg_jax.weights.io import DEFAULT_CHECKPOINT  # the embedded trained CLIPSeg: offline, no download

DEFAULT_THRESHOLD = 0.5
SOFT = 0.0  # the threshold slider's value meaning "show probabilities, no threshold"
SLIDER_STEP = 0.05
MB = 1 << 20
VISUAL_LABEL = "visual prompt"
# Brush diameter (px of the support image). gradio's "auto" brush is so wide that masks spill past the
# object, and a spilled visual prompt finds little (1% of the object against 9% painted tightly).
BRUSH_SIZE = 8
SUPPORT_OPERAND = "support"  # the painted visual prompt's name in expressions: "the star" - $support
INSTANCE_MIN_AREA = 16  # px: specks below this are not instances
MAX_BOXES_PER_PROMPT = 20  # instances drawn per prompt (highest scores first)
SUPPORT_HINT = (
  "The visual prompt is shown below as the model sees it: the object highlighted, the rest darkened and blurred. "
  "If the highlight spills past the object, paint more tightly inside it."
)
KEEP_RESULTS = 32  # request folders of mask downloads kept (gradio copies outputs into its own cache)
CACHE_CLEANUP_S = (3600, 3600)  # gradio's delete_cache: every hour, remove its cached files older than an hour
WARM_UP_SIZE = 64  # the tiny image compiled at start (text and visual stages)
IMAGE_HEIGHT = 300  # display heights (px) of the query, support editor and result, to keep the page compact
EDITOR_HEIGHT = 380
RESULT_HEIGHT = 460


def unique_labels(labels: list[str]) -> list[str]:
  """Labels key the result's layers and colours: repeated ones get a number."""
  seen: collections.Counter = collections.Counter()
  out = []
  for label in labels:
    seen[label] += 1
    out.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
  return out


def hex_color(rgb) -> str:
  r, g, b = (int(c) for c in rgb)
  return f"#{r:02x}{g:02x}{b:02x}"


@dataclasses.dataclass
class Result:
  """One request's answer: the query image, one (mask, label) layer per prompt, their colours, the
  downloadable files (a zip first, then a PNG per prompt), notes for people, the visual prompt as the
  model sees it (uint8, None without one), the label map over the image (when asked for) and the
  instances' boxes ((x0, y0, x1, y1), label) (when asked for)."""

  image: np.ndarray
  layers: list[tuple[np.ndarray, str]]
  colors: dict[str, str]
  files: list[str]
  notes: str
  support_view: np.ndarray | None = None
  label_view: np.ndarray | None = None
  boxes: list[tuple[tuple[int, int, int, int], str]] = dataclasses.field(default_factory=list)


class AppSegmenter:
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
      return decode_upload(raw, self.max_side)  # large JPEGs are decoded at reduced scale directly
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
      mask = resize_mask(mask, (image.height, image.width))
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
    if any(algebra.is_expression(p) for p in texts):
      operands = {SUPPORT_OPERAND: prompts[-1]} if support is not None else {}
      try:
        leaves = algebra.compile_expressions(prompts, operands).prompts
      except ValueError as e:
        raise InputError(str(e)) from e
      if len(leaves) > self.limits.max_prompts:
        raise InputError(f"{len(leaves)} distinct prompts in the expressions; the limit is {self.limits.max_prompts}")
    return prompts, unique_labels(labels)

  def __call__(
    self,
    image,
    text,
    support=None,
    mix_text="",
    text_weight=DEFAULT_TEXT_WEIGHT,
    threshold=None,
    label_map=False,
    find_instances=False,
  ):
    """One request: the query image's file path, text prompts (or expressions, with the visual prompt as
    `$support`), the editor's value, a text to mix into the visual prompt with its weight, a threshold
    (None or SOFT: probabilities), and whether to add a label map and the instances' boxes -> Result."""
    threshold = None if threshold is None or float(threshold) <= SOFT else float(threshold)
    if threshold is not None and threshold > 1.0:
      raise InputError(f"the threshold must be in [0, 1], got {threshold}")
    try:
      return self._segment(image, text, support, mix_text, text_weight, threshold, label_map, find_instances)
    finally:
      release_memory()  # large decodes are handed back to the OS, as the server does

  def _segment(self, image, text, support, mix_text, text_weight, threshold, label_map, find_instances) -> Result:
    query, notes = self.read_query(image)
    pair = self.read_support(support)
    if pair is not None:
      notes += pair[2]
    prompts, labels = self.prompts(text, pair[:2] if pair else None, mix_text, text_weight)
    start = time.perf_counter()
    with self.lock:
      operands = {SUPPORT_OPERAND: prompts[-1]} if pair is not None else None
      probs = algebra.predict_one(self.model, query, prompts, operands=operands, on_host=True)
    seconds = time.perf_counter() - start
    masks = probs if threshold is None else (probs > threshold).astype(np.float32)
    palette = visualize.contrast_colors(np.asarray(query, np.float32), np.asarray(masks, np.float32))
    files = self.write(query, masks, labels, palette)  # the page and the downloaded overlay: the same colours
    coverage = ", ".join(f"{label}: {visualize.coverage(m):.0%}" for label, m in zip(labels, masks))
    what = "probabilities" if threshold is None else f"masks at threshold {threshold:g}"
    lines = [f"{len(prompts)} prompt(s) in {seconds:.2f} s ({what}; coverage {coverage})"] + notes
    view = None
    if pair is not None:
      view = preprocess.denormalize(self.model.support_pixels(np.asarray(pair[0]), pair[1]))
      lines.append(SUPPORT_HINT)
    label_view = None
    if label_map:
      t = DEFAULT_THRESHOLD if threshold is None else threshold
      label_view = np.asarray(labelmap.label_overlay(query, labelmap.label_map(probs, t), labels))
    boxes = []
    if find_instances:
      t = DEFAULT_THRESHOLD if threshold is None else threshold
      for label, p in zip(labels, probs):
        found = instances.instances_at(
          p, self.model.image_size, t, min_area=INSTANCE_MIN_AREA, limit=MAX_BOXES_PER_PROMPT
        )
        boxes += [(tuple(i["box"]), f"{label} #{k + 1} ({i['score']:.2f})") for k, i in enumerate(found)]
      lines.append(f"{len(boxes)} instance(s) at threshold {t:g} (at least {INSTANCE_MIN_AREA} px each)")
    return Result(
      image=np.asarray(query),
      layers=list(zip(masks, labels)),
      colors={label: hex_color(c) for label, c in zip(labels, palette)},
      files=files,
      notes="\n\n".join(lines),
      support_view=view,
      label_view=label_view,
      boxes=boxes,
    )

  def write(self, image: Image.Image, masks: np.ndarray, labels: list[str], colors=None) -> list[str]:
    """Mask PNGs (one per prompt) and a zip of them with the overlay, in a fresh folder; old ones pruned."""
    folder = self.out_dir / uuid.uuid4().hex
    folder.mkdir()
    pngs = []
    for i, (mask, label) in enumerate(zip(masks, labels)):
      path = folder / f"{i:02d}_{visualize.slug(label)}_mask.png"
      visualize.mask_image(mask).save(path)
      pngs.append(path)
    overlay = folder / "overlay.png"
    visualize.overlay(image, masks, labels, colors=colors).save(overlay)
    archive = folder / "clipseg_masks.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
      for path in [*pngs, overlay]:
        z.write(path, path.name)
    self.recent.append(folder)
    while len(self.recent) > KEEP_RESULTS:
      shutil.rmtree(self.recent.popleft(), ignore_errors=True)
    return [str(archive)] + [str(p) for p in pngs]


def build_app(model, *, name: str = "", limits: AppLimits | None = None, examples: bool = True, segmenter=None):
  """The Gradio app (gr.Blocks) for `model`; `name` (the checkpoint) is shown on the page."""
  import gradio as gr

  segmenter = segmenter or AppSegmenter(model, limits)
  limits = segmenter.limits

  def run(image, text, support, mix_text, text_weight, threshold, label_map, find_instances):
    try:
      r = segmenter(image, text, support, mix_text, text_weight, threshold, label_map, find_instances)
    except InputError as e:
      raise gr.Error(str(e), print_exception=False) from e
    view = gr.Image(value=r.support_view, visible=r.support_view is not None)
    labels = gr.Image(value=r.label_view, visible=r.label_view is not None)
    annotated = gr.AnnotatedImage(value=(r.image, [*r.layers, *r.boxes]), color_map=r.colors)
    return annotated, r.files, r.notes, view, labels

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
          label="Text prompts",
          info='one per line, or separated by commas; a line may combine prompts: "head" - "ear", '
          '"a cat" | "a dog", "the star" & $support (the visual prompt)',
          lines=3,
          elem_id="text-prompts",
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
        with gr.Row():
          label_map = gr.Checkbox(label="Label map (one prompt per pixel)", elem_id="label-map")
          find_instances = gr.Checkbox(label="Instances (boxes)", elem_id="instances")
        button = gr.Button("Segment", variant="primary", elem_id="run")
      with gr.Column():
        result = gr.AnnotatedImage(
          label="Result: one layer per prompt", height=RESULT_HEIGHT, format="png", elem_id="result"
        )
        files = gr.File(label="Masks (PNG, and all of them in a zip)", file_count="multiple", elem_id="masks")
        notes = gr.Markdown(elem_id="notes")
        view = gr.Image(
          label="The visual prompt as the model sees it", visible=False, height=IMAGE_HEIGHT, elem_id="support-view"
        )
        labels = gr.Image(label="Label map", visible=False, height=IMAGE_HEIGHT, elem_id="label-view")
    inputs = [image, text, support, mix_text, text_weight, threshold, label_map, find_instances]
    outputs = [result, files, notes, view, labels]
    button.click(run, inputs, outputs, api_name="segment", concurrency_limit=limits.concurrency)
    if examples:
      rows = example_inputs(segmenter.out_dir / "examples")
      gr.Examples(rows, inputs[:5], label="Examples (synthetic scenes)", elem_id="examples")
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
