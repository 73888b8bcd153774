"""Masks an editor can use as they come: connected components as instances (box, area, score), small specks
removed, holes filled, grown or shrunk, feathered edges; on any probability map [H, W].

Everything per pixel runs on the device as one jitted JAX function per image size and option set:
thresholding, connected-component labelling (min-label hooking with pointer jumping, iterated to a fixed
point), per-component area/score/box (segment reductions), hole filling (background components that do not
reach the border), disk dilation/erosion (a convolution with the disk) and Gaussian feathering (a separable
convolution). The host only picks out the components that exist. No SciPy needed (it is not a base
dependency); the tests check against `scipy.ndimage`.

Conventions: a pixel is foreground where p > threshold (strict, as `predict(threshold=)`); components are
8-connected by default (`connectivity=4` for edge neighbours only), holes are background components
(4-connected when the foreground is 8-connected, and vice versa) that do not touch the image border;
outside the image the mask is taken to continue its edge pixels (an object cut by the border is neither
eroded nor feathered from that side); boxes are (x0, y0, x1, y1) in pixels with x1, y1 exclusive (PIL's
crop box).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from clipseg_jax import preprocess

DEFAULT_THRESHOLD = 0.5
FEATHER_TRUNCATE = 4.0  # Gaussian kernel radius in sigmas (scipy.ndimage's default)
JUMPS = 3  # pointer-jumping rounds per labelling step (measured: 6-7 steps label a 768x1024 map)


@dataclasses.dataclass
class Instance:
  """One connected component: `mask` bool [H, W] (`soft` float32 [H, W] with feathering, else None), `box`
  (x0, y0, x1, y1), `area` in pixels and `score` = the mean probability over the component's pixels."""

  mask: np.ndarray = dataclasses.field(repr=False)
  box: tuple[int, int, int, int]
  area: int
  score: float
  soft: np.ndarray | None = dataclasses.field(default=None, repr=False)

  def to_dict(self) -> dict:
    return {"box": list(self.box), "area": self.area, "score": self.score}


def _offsets(connectivity: int) -> list[tuple[int, int]]:
  if connectivity not in (4, 8):
    raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}")
  edge = [(0, 1), (1, 0), (0, -1), (-1, 0)]
  return edge + ([(1, 1), (1, -1), (-1, 1), (-1, -1)] if connectivity == 8 else [])


def _neighbour_min(x, offsets, fill):
  h, w = x.shape
  padded = jnp.pad(x, 1, constant_values=fill)
  out = x
  for dy, dx in offsets:
    out = jnp.minimum(out, padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w])
  return out


def _roots(mask, connectivity: int):
  """[H, W] int32: each foreground pixel's component root (the smallest flat index in its component, so
  roots in increasing order are components in raster order of their first pixel); H * W on background."""
  h, w = mask.shape
  none = h * w
  offsets = _offsets(connectivity)
  start = jnp.where(mask, jnp.arange(none, dtype=jnp.int32).reshape(h, w), none)

  def step(state):
    labels, _ = state
    smallest = jnp.where(mask, _neighbour_min(labels, offsets, none), none)
    # Hooking: a pixel's label is a pixel of its component; point that pixel at the smallest label next to
    # this one (so whole trees merge at once: a few iterations where propagation alone takes hundreds).
    flat = jnp.append(labels.reshape(-1), jnp.int32(none)).at[labels.reshape(-1)].min(smallest.reshape(-1))
    new = jnp.minimum(flat[:-1].reshape(h, w), smallest)
    for _ in range(JUMPS):  # pointer jumping: follow each label to that pixel's label
      new = jnp.append(new.reshape(-1), jnp.int32(none))[new]
    return new, jnp.any(new != labels)

  labels, _ = jax.lax.while_loop(lambda s: s[1], step, (start, jnp.bool_(True)))
  return labels


def _component_sizes(roots):
  n = roots.size
  return jnp.zeros(n + 1, jnp.int32).at[roots.reshape(-1)].add(1)


def _disk(radius: int) -> np.ndarray:
  r = np.arange(-radius, radius + 1)
  return (r[:, None] ** 2 + r[None, :] ** 2 <= radius**2).astype(np.float32)


def _convolve(x, kernel: np.ndarray):
  """x [H, W] float32 correlated with a (2r+1)-square kernel, edge pixels extended."""
  r0, r1 = kernel.shape[0] // 2, kernel.shape[1] // 2
  padded = jnp.pad(x, ((r0, r0), (r1, r1)), mode="edge")
  return jax.lax.conv_general_dilated(
    padded[None, None], jnp.asarray(kernel)[None, None], (1, 1), "VALID", precision=jax.lax.Precision.HIGHEST
  )[0, 0]


def _morph(mask, radius: int, grow: bool):
  disk = _disk(radius)
  hits = _convolve(mask.astype(jnp.float32), disk)  # exact small integer counts
  return hits > 0.5 if grow else hits > disk.sum() - 0.5


def gaussian_kernel(sigma: float) -> np.ndarray:
  """The normalised 1-D Gaussian of `feather` (radius round(FEATHER_TRUNCATE * sigma), as scipy.ndimage)."""
  radius = max(1, int(FEATHER_TRUNCATE * sigma + 0.5))
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  k = np.exp(-0.5 * (x / sigma) ** 2)
  return (k / k.sum()).astype(np.float32)


def _feather(mask, sigma: float):
  k = gaussian_kernel(sigma)
  x = _convolve(mask.astype(jnp.float32), k[:, None])
  return jnp.clip(_convolve(x, k[None, :]), 0.0, 1.0)


@functools.partial(jax.jit, static_argnames=("max_hole", "erode", "dilate", "connectivity"))
def _clean(prob, threshold, min_area, max_hole, erode, dilate, connectivity):
  """max_hole: 0 fills no holes, -1 all, n > 0 those of at most n pixels."""
  mask = prob > threshold
  roots = _roots(mask, connectivity)
  sizes = _component_sizes(roots)
  mask = mask & (sizes[roots] >= min_area)
  if max_hole:
    background = ~mask
    hole_roots = _roots(background, 12 - connectivity)  # the complementary connectivity
    h, w = mask.shape
    border = jnp.concatenate([hole_roots[0], hole_roots[-1], hole_roots[:, 0], hole_roots[:, -1]])
    reaches = jnp.zeros(h * w + 1, bool).at[border].set(True)
    small = _component_sizes(hole_roots)[hole_roots] <= (h * w if max_hole < 0 else max_hole)
    mask = mask | (background & ~reaches[hole_roots] & small)
  if erode:
    mask = _morph(mask, erode, grow=False)
  if dilate:
    mask = _morph(mask, dilate, grow=True)
  return mask


@functools.partial(jax.jit, static_argnames=("connectivity",))
def _components(mask, prob, connectivity):
  """Per root (flat index; H * W collects the background): area, summed probability and the box."""
  h, w = mask.shape
  roots = _roots(mask, connectivity).reshape(-1)
  n = h * w + 1
  ys, xs = jnp.divmod(jnp.arange(h * w, dtype=jnp.int32), w)
  area = jax.ops.segment_sum(jnp.ones(h * w, jnp.int32), roots, n)
  total = jax.ops.segment_sum(prob.reshape(-1).astype(jnp.float32), roots, n)
  box = [jax.ops.segment_min(xs, roots, n), jax.ops.segment_min(ys, roots, n)]
  box += [jax.ops.segment_max(xs, roots, n) + 1, jax.ops.segment_max(ys, roots, n) + 1]
  return roots.reshape(h, w), area, total, jnp.stack(box, -1)


def _check(prob, threshold, min_area, fill_holes, erode, dilate, feather, connectivity):
  prob = np.asarray(prob)
  if prob.ndim != 2:
    raise ValueError(f"a probability map must be [H, W], got shape {prob.shape}")
  if not 0.0 <= float(threshold) <= 1.0:
    raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
  for name, value in (("min_area", min_area), ("erode", erode), ("dilate", dilate)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
      raise ValueError(f"{name} must be a non-negative integer (pixels), got {value!r}")
  if not isinstance(fill_holes, (bool, int, np.integer)) or fill_holes < 0:
    raise ValueError(f"fill_holes must be True/False or a maximum hole area in pixels, got {fill_holes!r}")
  if not (isinstance(feather, (int, float)) and feather >= 0 and math.isfinite(feather)):
    raise ValueError(f"feather must be a non-negative Gaussian sigma in pixels, got {feather!r}")
  _offsets(connectivity)
  max_hole = (-1 if fill_holes else 0) if isinstance(fill_holes, bool) else int(fill_holes)
  return prob.astype(np.float32), max_hole


def _checked_and_cleaned(prob, threshold, min_area, fill_holes, erode, dilate, feather, connectivity):
  """(prob as checked, the cleaned jax bool mask): what `clean_mask` and `instances` both start with."""
  prob, fill = _check(prob, threshold, min_area, fill_holes, erode, dilate, feather, connectivity)
  mask = _clean(
    jnp.asarray(prob), jnp.float32(threshold), jnp.int32(min_area), fill, int(erode), int(dilate), connectivity
  )
  return prob, mask


def clean_mask(
  prob,
  threshold: float = DEFAULT_THRESHOLD,
  *,
  min_area: int = 0,
  fill_holes: bool | int = False,
  erode: int = 0,
  dilate: int = 0,
  feather: float = 0.0,
  connectivity: int = 8,
) -> np.ndarray:
  """A probability map [H, W] -> bool mask, cleaned in this order: threshold (p > threshold), drop components
  smaller than `min_area` pixels, fill holes (`True`: all; an int: those up to that many pixels), erode then
  dilate by disks of those radii (both: a morphological opening), then with `feather` (a Gaussian sigma in
  pixels) the float32 soft mask in [0, 1] of the blurred result instead of the bool mask."""
  prob, mask = _checked_and_cleaned(prob, threshold, min_area, fill_holes, erode, dilate, feather, connectivity)
  if feather:
    return np.asarray(_feather_jit(mask, float(feather)))
  return np.asarray(mask)


_feather_jit = jax.jit(_feather, static_argnames=("sigma",))
_roots_jit = jax.jit(_roots, static_argnames=("connectivity",))


def instances(
  prob,
  threshold: float = DEFAULT_THRESHOLD,
  *,
  min_area: int = 0,
  fill_holes: bool | int = False,
  erode: int = 0,
  dilate: int = 0,
  feather: float = 0.0,
  connectivity: int = 8,
  limit: int | None = None,
) -> list[Instance]:
  """The connected components of `clean_mask(prob, ...)` (without feathering) as `Instance`s, highest score
  first (ties: larger first, then raster order), at most `limit` (masks are built for those only: a
  speckled map may hold tens of thousands of components); `min_area` also applies after erosion/dilation.
  With `feather`, each instance also carries its own feathered `soft` mask."""
  prob, mask = _checked_and_cleaned(prob, threshold, min_area, fill_holes, erode, dilate, feather, connectivity)
  roots, area, total, boxes = (np.asarray(x) for x in _components(mask, jnp.asarray(prob), connectivity))
  ids = np.flatnonzero(area[:-1] >= max(1, min_area))
  order = sorted(ids, key=lambda i: (-total[i] / area[i], -area[i], i))[:limit]
  out = []
  for i in order:
    m = roots == i
    soft = np.asarray(_feather_jit(jnp.asarray(m), float(feather))) if feather else None
    out.append(Instance(m, tuple(int(v) for v in boxes[i]), int(area[i]), float(total[i] / area[i]), soft))
  return out


def instances_at(prob, size: int, threshold: float = DEFAULT_THRESHOLD, *, min_area: int = 0, limit=None) -> list[dict]:
  """`instances` of a map of any size found on it resized to size x size (a model's output size: its logits
  hold no finer detail), as dicts whose boxes (x0, y0, x1, y1) and areas are in the map's own pixels,
  highest score first, at most `limit`. One compiled shape for every image: what a server wants."""
  prob = np.asarray(prob, np.float32)
  if prob.ndim != 2:
    raise ValueError(f"a probability map must be [H, W], got shape {prob.shape}")
  h, w = prob.shape
  sx, sy = w / size, h / size
  small = preprocess.resize_map(prob, size, size)
  found = instances(small, threshold, min_area=math.ceil(min_area / (sx * sy)), limit=limit)
  return [
    {
      "box": [round(x0 * sx), round(y0 * sy), round(x1 * sx), round(y1 * sy)],
      "area": round(i.area * sx * sy),
      "score": round(i.score, 4),
    }
    for i in found
    for x0, y0, x1, y1 in [i.box]
  ]


def label_components(mask, connectivity: int = 8) -> tuple[np.ndarray, int]:
  """(int32 labels [H, W] with 0 background and 1..K the components in raster order of their first pixel,
  K): the numbering `scipy.ndimage.label` gives."""
  mask = np.asarray(mask, bool)
  if mask.ndim != 2:
    raise ValueError(f"a mask must be [H, W], got shape {mask.shape}")
  roots = np.asarray(_roots_jit(jnp.asarray(mask), connectivity))
  ids, labels = np.unique(roots, return_inverse=True)
  labels = labels.reshape(mask.shape).astype(np.int32) + 1
  labels[~mask] = 0
  return labels, int((ids < mask.size).sum())
