"""PhraseCut+ sampling (paper section 3.1), as the original code did it.

Per sample: an object-aware random square crop (side min(H, W); up to `crop_tries` tries for one
keeping > `min_mask_fraction` of the mask, else the best seen), resized to `image_size` (image
bilinear, mask nearest), ImageNet normalisation; with probability `q_neg` the phrase is swapped for
another and the mask zeroed; a visual support from another sample with the same phrase, cropped the
same way and passed through visual prompt engineering (ImageNet-normalised float32); query images
stay uint8 (4x less to move between processes; the model step normalises them); a prompt template
("shuffle+"); and the text weight w of `cond = w * text + (1 - w) * visual` drawn from U(0, `mix_max`)
(1 without support).
"""

from __future__ import annotations

import collections
import dataclasses
import logging

import numpy as np

from clipseg_jax import preprocess, prompts

TEMPLATES = (
  "{}",
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


@dataclasses.dataclass(frozen=True)
class PCPlusOptions:
  image_size: int = 352
  q_neg: float = 0.2
  visual_prompts: bool = True  # False: text only (the paper's "PC" variant)
  mix_max: float = 0.5  # w ~ U(0, mix_max); the code used 0.5, the paper text says 1
  prompt_mode: str = "crop_blur_highlight"
  templates: tuple[str, ...] = TEMPLATES
  crop_tries: int = 50
  min_mask_fraction: float = 0.05
  augment: bool = True  # False: no random crop (query images fixed: CLIP features cacheable)

  @classmethod
  def from_config(cls, cfg) -> PCPlusOptions:
    """From a mapping/ConfigDict holding (some of) these fields; unknown keys are an error."""
    d = dict(cfg)
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f"unknown PhraseCut+ option(s): {', '.join(sorted(unknown))}")
    if "templates" in d:
      d["templates"] = tuple(d["templates"])
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
  """(top, left, side) of a square crop keeping > min_fraction of the mask if one is found."""
  h, w = mask.shape
  side = min(h, w)
  total = mask.sum()
  best, best_kept = (0, 0), -1.0
  for _ in range(tries if total else 1):
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    kept = mask[top : top + side, left : left + side].sum() / total if total else 0.0
    if kept > best_kept:
      best, best_kept = (top, left), kept
    if kept > min_fraction:
      break
  return best[0], best[1], side


def random_crop(image, mask, rng, opts: PCPlusOptions):
  if not opts.augment:
    return image, mask
  top, left, side = object_aware_crop(mask, rng, opts.crop_tries, opts.min_mask_fraction)
  return image[top : top + side, left : left + side], mask[top : top + side, left : left + side]


def resize_pair(image, mask, size: int):
  return preprocess.resize_square(image, size), preprocess.resize_square(np.asarray(mask, bool), size, nearest=True)


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

  def choose(self, pair_id: int, rng: np.random.Generator) -> Choice:
    opts, phrase, negative = self.opts, self.index.phrases[pair_id], False
    if rng.random() < opts.q_neg:
      other = self.index.phrases[int(rng.integers(len(self.index)))]
      if other != phrase:
        phrase, negative = other, True
    template = int(rng.integers(len(opts.templates)))
    support, weight = None, 1.0
    if opts.visual_prompts:
      candidates = [p for p in self.index.by_phrase.get(phrase, ()) if p != pair_id]
      if candidates:
        support = candidates[int(rng.integers(len(candidates)))]
        weight = float(rng.uniform(0.0, opts.mix_max))
    return Choice(phrase, negative, template, support, weight)


class PCPlusTransform:
  """Callable (pair id, rng) -> one training sample (numpy). Picklable for grain workers."""

  def __init__(self, source, index: PairIndex, opts: PCPlusOptions):
    self.source, self.opts = source, opts
    self.sampler = PCPlusSampler(index, opts)

  def _pair(self, pair_id: int):
    r, k = self.sampler.index.pairs[pair_id]
    record = self.source[r]
    return record["image"], record["masks"][k]

  def __call__(self, pair_id: int, rng: np.random.Generator) -> dict:
    opts, pair_id = self.opts, int(pair_id)
    choice = self.sampler.choose(pair_id, rng)
    image, mask = self._pair(pair_id)
    if choice.negative:
      mask = np.zeros_like(mask)
    image, mask = resize_pair(*random_crop(image, mask, rng, opts), opts.image_size)
    sample = {
      "pixels": image,
      "mask": mask.astype(np.float32),
      "text": opts.templates[choice.template].format(choice.phrase),
      "support": np.zeros(image.shape, np.float32),  # normalised 0: the mean colour
      "text_weight": np.float32(choice.text_weight),
    }
    if choice.support is not None:
      # As the original: the support is cropped and resized to the image size like a query, then
      # goes through prompt engineering (normalised float32 out).
      s_image, s_mask = resize_pair(*random_crop(*self._pair(choice.support), rng, opts), opts.image_size)
      sample["support"] = prompts.visual_prompt(s_image, s_mask, opts.prompt_mode, opts.image_size)
    return sample
