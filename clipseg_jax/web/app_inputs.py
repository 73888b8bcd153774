"""The Gradio app's inputs, read and checked without gradio: typed prompts, the image editor's painted
layers, its uploads checked from their header before gradio decodes them, and the offline example scenes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageColor

from clipseg_jax import algebra
from clipseg_jax.web.uploads import check_pixels

DEFAULT_TEXT_WEIGHT = 0.5  # of a mixed prompt: w * text + (1 - w) * visual
PROMPT_SPLIT = re.compile(r"[\n,]")  # prompts: one per line, or comma separated
BRUSH_COLOR = "#ff00ff"  # the painted mask is the layer's alpha; the colour only shows it
EXAMPLE_SIZE = 256  # side of the synthetic example scenes (the embedded model trained on such scenes)
EXAMPLE_SEEDS = (3, 11)  # scenes for the examples (deterministic)
SUPPORT_SEARCH = 200  # seeds tried for a support scene holding an object like the query's


class InputError(ValueError):
  """A request the app refuses; the page shows its message."""


def split_prompts(text: str | None) -> list[str]:
  """Text prompts typed one per line or comma separated -> stripped, non-empty, first occurrences only. A
  line that is a prompt expression (`algebra.is_expression`: it starts with a quote, `(` or `$`) is one
  prompt: its quoted operands may hold commas."""
  lines = (text or "").splitlines()
  parts = [[line] if algebra.is_expression(line) else PROMPT_SPLIT.split(line) for line in lines]
  return list(dict.fromkeys(p.strip() for group in parts for p in group if p.strip()))


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
    mask |= painted if painted.shape == shape else resize_mask(painted, shape)
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


def resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(shape[::-1], Image.NEAREST)) > 0


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
