"""The built-in synthetic referring-segmentation dataset: offline, deterministic from a seed.

Each scene has 2-4 coloured shapes (some overlapping, the later ones on top) on a textured
background. Every object gets the phrases that single it out in its scene ("red circle",
"the large blue square", "the triangle on the left", "the yellow object", ...) with the mask of
its visible pixels; phrases naming a colour/shape pair absent from the scene come with an empty
mask (negatives). Several objects per scene make the prompt necessary; flat colours and a handful
of words keep it learnable by the decoder on a CPU in minutes.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

COLORS = {
  "red": (215, 40, 40),
  "green": (40, 170, 60),
  "blue": (40, 80, 220),
  "yellow": (235, 210, 40),
  "purple": (140, 50, 170),
  "orange": (240, 130, 30),
}
SHAPES = ("circle", "square", "triangle", "star")
SIZES = {"small": (0.08, 0.12), "large": (0.16, 0.22)}  # radius as a fraction of the image side
MAX_PHRASES_PER_OBJECT = 3
MIN_GAP = 0.7  # centre distance / sum of radii below which a placement is retried


@dataclasses.dataclass
class SceneObject:
  color: str
  shape: str
  size: str
  center: tuple[float, float]  # (x, y) in pixels
  radius: float
  mask: np.ndarray = dataclasses.field(repr=False, default=None)  # visible pixels


def _shape_polygon(shape: str, cx: float, cy: float, r: float, angle: float):
  if shape == "square":
    k = np.arange(4) * np.pi / 2 + np.pi / 4 + angle * 0.3
    return list(zip(cx + r * np.cos(k), cy + r * np.sin(k)))
  if shape == "triangle":
    k = np.arange(3) * 2 * np.pi / 3 - np.pi / 2
    return list(zip(cx + r * np.cos(k), cy + r * np.sin(k)))
  if shape == "star":
    k = np.arange(10) * np.pi / 5 - np.pi / 2 + angle * 0.2
    rad = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
    return list(zip(cx + rad * np.cos(k), cy + rad * np.sin(k)))
  raise ValueError(shape)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
  base = rng.uniform(90, 200, 3)
  kind = rng.integers(3)
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
  if kind == 0:  # stripes
    theta, period = rng.uniform(0, np.pi), rng.uniform(8, 24)
    pattern = np.sin((xx * np.cos(theta) + yy * np.sin(theta)) * 2 * np.pi / period)
  elif kind == 1:  # checker
    cell = rng.integers(10, 30)
    pattern = ((xx // cell + yy // cell) % 2) * 2 - 1
  else:  # smooth noise
    small = rng.normal(size=(8, 8)).astype(np.float32)
    pattern = np.asarray(Image.fromarray(small, "F").resize((size, size), Image.BICUBIC))
  img = base + rng.uniform(10, 25) * pattern[..., None] + rng.normal(0, 6, (size, size, 3))
  return np.clip(img, 0, 255)


def make_scene(rng: np.random.Generator, size: int = 256, n_objects: int | None = None):
  """-> (uint8 image [size, size, 3], objects with visible masks); 2-4 objects unless `n_objects`."""
  n = int(rng.integers(2, 5)) if n_objects is None else n_objects
  pairs = [(c, s) for c in COLORS for s in SHAPES]
  chosen = rng.choice(len(pairs), n, replace=False)  # colour/shape pairs are unique in a scene
  img = _background(rng, size)
  objects = []
  for idx in chosen:
    color, shape = pairs[idx]
    size_name = str(rng.choice(list(SIZES)))
    r = rng.uniform(*SIZES[size_name]) * size
    for _ in range(20):  # some overlap, but no object mostly hidden
      cx, cy = rng.uniform(r, size - r, 2)
      if all(np.hypot(cx - o.center[0], cy - o.center[1]) > MIN_GAP * (r + o.radius) for o in objects):
        break
    layer = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(layer)
    if shape == "circle":
      draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    else:
      draw.polygon(_shape_polygon(shape, cx, cy, r, rng.uniform(-1, 1)), fill=1)
    m = np.asarray(layer, bool)
    shade = np.array(COLORS[color], np.float32) * rng.uniform(0.85, 1.1) + rng.normal(0, 5, (size, size, 3))
    img = np.where(m[..., None], shade, img)
    for o in objects:
      o.mask = o.mask & ~m
    objects.append(SceneObject(color, shape, size_name, (float(cx), float(cy)), float(r), m))
  img = np.asarray(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(ImageFilter.SMOOTH))
  return img, objects


def phrases_for(obj: SceneObject, objects: list[SceneObject]) -> list[str]:
  """All phrases that identify `obj` and no other object of the scene."""
  others = [o for o in objects if o is not obj]
  out = [f"{obj.color} {obj.shape}", f"the {obj.size} {obj.color} {obj.shape}"]
  if all(o.shape != obj.shape for o in others):
    out += [obj.shape, f"the {obj.shape}"]
  if all(o.color != obj.color for o in others):
    out += [f"the {obj.color} object", f"something {obj.color}"]
  if all((o.size, o.shape) != (obj.size, obj.shape) for o in others):
    out.append(f"the {obj.size} {obj.shape}")
  same_shape = [o for o in others if o.shape == obj.shape]
  if len(same_shape) == 1:
    side = "left" if obj.center[0] < same_shape[0].center[0] else "right"
    out.append(f"the {obj.shape} on the {side}")
  return out


def negative_phrase(rng: np.random.Generator, objects: list[SceneObject]) -> str:
  present = {(o.color, o.shape) for o in objects}
  absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
  c, s = absent[int(rng.integers(len(absent)))]
  return f"{c} {s}"


def caption(objects: list[SceneObject]) -> str:
  """A caption naming every object (for pretraining a small CLIP on the scenes)."""
  names = [f"a {o.size} {o.color} {o.shape}" for o in objects]
  return "a picture of " + (", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0])


def scene_examples(seed: int, index: int, size: int = 256, negatives: int = 1):
  """The (image, mask, phrase) examples of scene `index` of the stream seeded by `seed`."""
  rng = np.random.default_rng([seed, index])
  image, objects = make_scene(rng, size)
  out = []
  for k, obj in enumerate(objects):
    if not obj.mask.any():  # fully hidden behind later objects
      continue
    phrases = phrases_for(obj, objects)
    keep = rng.choice(len(phrases), min(MAX_PHRASES_PER_OBJECT, len(phrases)), replace=False)
    for j in sorted(keep):
      out.append({"image": image, "mask": obj.mask, "phrase": phrases[j], "object": k})
  for _ in range(negatives):
    out.append(
      {"image": image, "mask": np.zeros((size, size), bool), "phrase": negative_phrase(rng, objects), "object": -1}
    )
  return out, caption(objects)
