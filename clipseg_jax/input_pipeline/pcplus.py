"""PhraseCut+ sampling (paper section 3.1), as the original code did it.

Per sample: an object-aware random square crop on the pair's true mask (side min(H, W); up to
`crop_tries` tries for one holding more mask pixels than `min_mask_fraction` of the image's area, else
the one holding most: the original's `find_crop`), resized to `image_size` as the original's
`load_sample` (image: torch's bilinear with align_corners=True on float pixels, no antialiasing; mask:
torch's nearest); then, with probability `q_neg`, the phrase is swapped for another distinct phrase
(uniform over them) and the cropped mask zeroed; a visual support drawn uniformly from the
samples with the same phrase (the query's own included, none for a phrase with one sample: the
original's draws), cropped and resized the same way and passed through visual prompt engineering
(ImageNet-normalised float32); query pixels float32 0..255, unrounded as the original's (the model
step normalises them); a prompt template ("shuffle+" when visual prompts are mixed in, the raw phrase
otherwise); and the text weight w of `cond = w * text + (1 - w) * visual` drawn from U(0, `mix_max`)
(1 without support).

`PCPlusTransform.draw` makes every random draw; `PCPlusTransform` finishes a sample on the host,
`PCPlusRawTransform` (`device_augment`) ships the same draws as uint8 crops for `device.finish`,
which resizes them and runs the prompt engineering in the step. Records may carry encoded
`image_bytes` instead of `image`: they are decoded once the crop is drawn.
"""

from __future__ import annotations

import collections
import dataclasses
import logging

import numpy as np

from clipseg_jax import preprocess, prompts
from clipseg_jax.input_pipeline import sources

# timojl/clipseg `models/clipseg.py` `get_prompt_list("shuffle+")`: no bare "{}". Its `training.py`
# samples them (`model.sample_prompts`) only when `mix` is on; otherwise the raw phrase is the prompt.
TEMPLATES = (
  "a photo of a {}.",
  "a photograph of a {}.",
  "an image of a {}.",
  "{}.",
  "a cropped photo of a {}.",
  "a good photo of a {}.",
  "a photo of one {}.",
  "a bad photo of a {}.",
  "a photo of the {}.",
)
PLAIN = ("{}",)  # the raw phrase (the original's "plain" prompt list)


@dataclasses.dataclass(frozen=True)
class PCPlusOptions:
  """PhraseCut+ sampling; the defaults are the original's (timojl/clipseg `experiments/phrasecut.yaml`
  rd64-uni, `datasets/phrasecut.py`)."""

  image_size: int = 352
  q_neg: float = 0.2
  visual_prompts: bool = True  # False: text only (the paper's "PC" variant)
  mix_max: float = 0.5  # w ~ U(0, mix_max); the code used 0.5, the paper text says 1
  prompt_mode: str = "crop_blur_highlight"
  # One drawn per sample. None: the original's rule, TEMPLATES ("shuffle+") when visual prompts are
  # mixed in (its `mix: True`), PLAIN (the raw phrase) for text-only training (`mix: False`).
  templates: tuple[str, ...] | None = None
  crop_tries: int = 50  # the original's `find_crop(iterations=50)`
  # A crop is accepted when it holds more mask pixels than this fraction of the IMAGE's area (not of
  # the mask: the original's `find_crop(min_frac=0.05)`, `sum > H * W * min_frac`).
  min_mask_fraction: float = 0.05
  augment: bool = True  # False: no random crop (query images fixed: CLIP features cacheable)
  # True: workers ship uint8 arrays and the prompt engineering runs inside the jitted step
  # (clipseg_jax.input_pipeline.device); same samples, far less host work per sample.
  device_augment: bool = False
  # device_augment: crops are shipped as uint8 padded to this side and resized on the device; larger
  # ones are resized on the host (a bigger buffer moves more bytes per sample between processes).
  max_crop_side: int = 512

  def __post_init__(self):
    if self.templates is None:
      object.__setattr__(self, "templates", TEMPLATES if self.visual_prompts else PLAIN)

  @classmethod
  def from_config(cls, cfg) -> PCPlusOptions:
    """From a mapping/ConfigDict holding (some of) these fields; unknown keys are an error."""
    d = dict(cfg)
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f"unknown PhraseCut+ option(s): {', '.join(sorted(unknown))}")
    if d.get("templates") is not None:
      d["templates"] = (d["templates"],) if isinstance(d["templates"], str) else tuple(d["templates"])
    return cls(**d)


class PairIndex:
  """(record, phrase) pairs of a referring source and, per phrase, the pairs that carry it."""

  def __init__(self, source, keep=None):
    """`keep(phrase) -> bool` drops pairs (e.g. held-out classes); the number dropped is logged."""
    self.pairs: list[tuple[int, int]] = []
    self.by_phrase: dict[str, list[int]] = collections.defaultdict(list)
    self.phrases: list[str] = []
    self.dropped = 0
    for r in range(len(source)):
      for k, phrase in enumerate(source.phrases(r)):
        if keep is not None and not keep(phrase):
          self.dropped += 1
          continue
        self.by_phrase[phrase].append(len(self.pairs))
        self.pairs.append((r, k))
        self.phrases.append(phrase)
    if self.dropped:
      logging.getLogger(__name__).info(
        "dropped %d of %d pairs by phrase filter", self.dropped, self.dropped + len(self.pairs)
      )

  def __len__(self):
    return len(self.pairs)


def object_aware_crop(mask: np.ndarray, rng: np.random.Generator, tries: int, min_fraction: float):
  """(top, left, side) of a random square crop of side min(H, W), as the original's `find_crop`
  (timojl/clipseg `datasets/phrasecut.py`, `best_of=None`): up to `tries` tries, each drawing the top
  offset then the left one uniformly; the first holding more mask pixels than `min_fraction` x H x W
  (the image's area) is taken, else the first of those holding most. Every try is drawn, also for an
  empty mask, so the random stream advances as there.

  The square spans the shorter side, so only one offset varies: a try's count is a difference of
  prefix sums of the mask's profile along the longer side (the same integers as summing the crop)."""
  h, w = mask.shape
  side = min(h, w)
  profile = mask.sum(axis=0 if h == side else 1, dtype=np.int32)  # a column's count fits (half the work of int64)
  prefix = np.concatenate([[0], np.cumsum(profile, dtype=np.int64)])
  min_sum = h * w * min_fraction
  best, best_sum = None, -1
  for _ in range(tries):
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    start = left if h == side else top
    kept = int(prefix[start + side] - prefix[start])
    if kept > min_sum:
      return top, left, side
    if kept > best_sum:
      best, best_sum = (top, left), kept
  if best is None:  # no tries: the top left square
    best = (0, 0)
  return best[0], best[1], side


def resize_pair(image, mask, size: int):
  """The reference processor's resizes (PIL bilinear, PIL nearest); training crops use `resize_crop`."""
  return preprocess.resize_square(image, size), preprocess.resize_square(np.asarray(mask, bool), size, nearest=True)


def resize_crop(image: np.ndarray, mask: np.ndarray, size: int):
  """A crop resized as the original's `load_sample` did for training: the image by torch's bilinear
  with align_corners=True (float32 0..255, `preprocess.resize_aligned`), the mask by torch's nearest."""
  return preprocess.resize_aligned(image, size), prompts.resize_nearest(np.asarray(mask, bool), size)


def support_prompt(image: np.ndarray, mask: np.ndarray, mode: str, size: int) -> np.ndarray:
  """Visual prompt engineering (`prompts.visual_prompt`) on a support resized by `resize_crop`: its
  float pixels blended as they are (the original did not round them)."""
  recipe, out = prompts.parse_mode(mode, size)
  if recipe.context is not None:
    return prompts.crop_prompt(image, mask, recipe, out).astype(np.float32)  # float pixels, as they are
  if out == image.shape[0]:
    return prompts.blend(preprocess.normalize(image), mask.astype(np.float32), recipe).astype(np.float32)
  # A non-cropping mode at another size (not a recipe of the paper): the public path, on rounded pixels.
  return prompts.visual_prompt(to_uint8(image), mask, mode, size)


def to_uint8(image: np.ndarray) -> np.ndarray:
  """Float 0..255 pixels rounded to uint8."""
  return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def crop_buffer(opts: PCPlusOptions) -> int:
  """Side of the uint8 buffer each crop is shipped in on the device path (at least the image size)."""
  return max(opts.max_crop_side, opts.image_size)


def padded_keys(opts: PCPlusOptions) -> dict[str, tuple[int, int, int]]:
  """The device path's crops, shipped at their own size and padded by the batch (`handoff.Batcher`)
  to `crop_buffer` on each side: {key: per-sample shape}."""
  side = crop_buffer(opts)
  return {"pixels": (side, side, 3), "support_pixels": (side, side, 3)}


def ship_crop(image: np.ndarray, opts: PCPlusOptions) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 [h, w, 3] crop, int32 [2] its height and width); the batch pads it to `crop_buffer` with
  zeros (the device never reads them). A crop with a side over `max_crop_side` is resized here
  (`preprocess.resize_aligned`, rounded to uint8: within 0.5 of the host path) and shipped at the
  image size, which the device's resize keeps exactly."""
  h, w = image.shape[:2]
  if max(h, w) > opts.max_crop_side:
    image = to_uint8(preprocess.resize_aligned(image, opts.image_size))
    h = w = opts.image_size
  return image, np.array([h, w], np.int32)


def image_of(record: dict, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
  """A record's uint8 HxWx3 image (`image_bytes` decoded, else `image`), or its region `box` =
  (top, left, bottom, right)."""
  if "image_bytes" in record:
    return sources.decode_image(record["image_bytes"], box)
  image = record["image"]
  return image if box is None else image[box[0] : box[2], box[1] : box[3]]


@dataclasses.dataclass(frozen=True)
class Choice:
  """The PhraseCut+ draws for one sample, apart from the crops."""

  phrase: str  # the prompt's phrase (another sample's for a negative)
  negative: bool  # the phrase was replaced: the target mask is empty
  template: int  # index into `PCPlusOptions.templates`
  support: int | None  # the pair whose image and mask make the visual prompt (None: text only)
  text_weight: float  # w in w * text + (1 - w) * visual (1 without a support)


class PCPlusSampler:
  """The one PhraseCut+ sampler: both the streaming transform and the feature cache draw from it."""

  def __init__(self, index: PairIndex, opts: PCPlusOptions):
    self.index, self.opts = index, opts
    self.distinct = sorted(index.by_phrase)  # the original's `all_phrases`

  def choose(self, pair_id: int, rng: np.random.Generator) -> Choice:
    """As the original's `PhraseCut.__getitem__`: a negative's phrase uniform over the distinct phrases,
    redrawn until it differs; the support uniform over every pair with the phrase (the query's own
    pair included), none when the phrase has a single pair."""
    opts, phrase, negative = self.opts, self.index.phrases[pair_id], False
    distinct = self.distinct
    if rng.random() < opts.q_neg and len(distinct) > 1:
      other = phrase
      while other == phrase:
        other = distinct[int(rng.integers(len(distinct)))]
      phrase, negative = other, True
    template = int(rng.integers(len(opts.templates)))
    support, weight = None, 1.0
    pairs = self.index.by_phrase.get(phrase, ())
    if opts.visual_prompts and len(pairs) > 1:
      support = pairs[int(rng.integers(len(pairs)))]
      weight = float(rng.uniform(0.0, opts.mix_max))
    return Choice(phrase, negative, template, support, weight)


class PCPlusTransform:
  """Callable (pair id, rng) -> one training sample (numpy). Picklable for grain workers."""

  def __init__(self, source, index: PairIndex, opts: PCPlusOptions):
    self.source, self.opts = source, opts
    self.sampler = PCPlusSampler(index, opts)

  def _record(self, pair_id: int):
    r, k = self.sampler.index.pairs[pair_id]
    record = self.source[r]
    return record, record["masks"][k]

  def _pair(self, pair_id: int):
    record, mask = self._record(pair_id)
    return image_of(record), mask

  def _crop(self, record: dict, mask: np.ndarray, rng: np.random.Generator):
    """The object-aware crop of one pair at the source's resolution: (uint8 image, bool mask).
    Records carrying encoded `image_bytes` are decoded here, at full scale, as the original."""
    opts = self.opts
    if not opts.augment:
      return image_of(record), mask
    top, left, side = object_aware_crop(mask, rng, opts.crop_tries, opts.min_mask_fraction)
    return image_of(record, (top, left, top + side, left + side)), mask[top : top + side, left : left + side]

  def draw(self, pair_id: int, rng: np.random.Generator):
    """The random part of a sample, shared by both paths (same draws, same order): the choice, the
    query crop and the support crop (None without one), each (uint8 image, bool mask), not resized.

    In the original's order (`PhraseCut.__getitem__`): the query is cropped on its true mask
    (`load_sample`), then a negative may replace the phrase and empty the cropped mask, then the
    support is drawn and cropped on its own mask."""
    pair_id = int(pair_id)
    record, mask = self._record(pair_id)
    image, mask = self._crop(record, mask, rng)
    choice = self.sampler.choose(pair_id, rng)
    query = (image, np.zeros_like(mask) if choice.negative else mask)
    support = None
    if choice.support is not None:
      # As the original: the support is cropped and resized to the image size like a query, then
      # goes through prompt engineering.
      support = self._crop(*self._record(choice.support), rng)
    return choice, query, support

  def __call__(self, pair_id: int, rng: np.random.Generator) -> dict:
    opts = self.opts
    choice, query, support = self.draw(pair_id, rng)
    image, mask = resize_crop(*query, opts.image_size)
    out = prompts.parse_mode(opts.prompt_mode, opts.image_size)[1]
    sample = {
      "pixels": image,
      "mask": mask.astype(np.float32),
      "text": opts.templates[choice.template].format(choice.phrase),
      # normalised 0 (the mean colour), at the prompt's size (a mode may name one: crop_blur_highlight224)
      "support": np.zeros((out, out, 3), np.float32),
      "text_weight": np.float32(choice.text_weight),
    }
    if support is not None:
      sample["support"] = support_prompt(*resize_crop(*support, opts.image_size), opts.prompt_mode, opts.image_size)
    return sample


class PCPlusRawTransform(PCPlusTransform):
  """The host half of `device_augment`: the same draws as `PCPlusTransform`; each crop shipped as uint8
  at its own size with its height and width (the batch pads it: `padded_keys`) for the device's
  resize, the masks resized here (nearest, cheap) and the support's mask box computed here;
  `device.finish` does the rest."""

  def __call__(self, pair_id: int, rng: np.random.Generator) -> dict:
    opts = self.opts
    size = opts.image_size
    choice, (image, mask), support = self.draw(pair_id, rng)
    recipe, _ = prompts.parse_mode(opts.prompt_mode, size)
    pixels, pixels_hw = ship_crop(image, opts)
    if support is None:  # an empty crop: the batch's zeros
      s_pixels, s_hw = np.zeros((0, 0, 3), np.uint8), np.array([size, size], np.int32)
      s_mask = np.zeros((size, size), bool)
    else:
      (s_pixels, s_hw), s_mask = ship_crop(support[0], opts), prompts.resize_nearest(support[1], size)
    box = prompts.mask_box(s_mask, recipe.context) if recipe.context is not None else (0, 0, size, size)
    return {
      "pixels": pixels,
      "pixels_hw": pixels_hw,
      "mask": prompts.resize_nearest(mask, size).view(np.uint8),
      "text": opts.templates[choice.template].format(choice.phrase),
      "text_weight": np.float32(choice.text_weight),
      "support_pixels": s_pixels,
      "support_hw": s_hw,
      "support_mask": s_mask.view(np.uint8),
      "support_box": np.asarray(box, np.int32),
      "has_support": np.bool_(support is not None),
    }
