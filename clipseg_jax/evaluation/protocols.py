"""The paper's evaluation protocols (its section 4, scored as the original's `score.py`).

Each protocol is `protocol(predictor, opts: EvalOptions) -> (numbers, examples)`: `predictor` has
`text`, `visual` and the probability methods (`ModelPredictor` around a ClipSeg, from `predictor_for`;
tests pass oracles), `numbers` is a JSON-ready dict and `examples` a few (image, prediction, truth, label)
tuples for the pictures. Every protocol encodes each query image once for all its prompts and scores where
the original does: PhraseCut and PASCAL zero-shot at the model's S x S (labels resized there by nearest),
the others at the ground truth's size (probabilities resized bilinearly, align_corners=True).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from tqdm import tqdm

from clipseg_jax import preprocess
from clipseg_jax.evaluation import zero_shot
from clipseg_jax.metrics import FIXED_THRESHOLDS, Accumulator
from clipseg_jax.metrics.binary import at_threshold, confusion_counts
from clipseg_jax.prompts import resize_nearest

N_EXAMPLES = 6  # predictions kept for the picture


@dataclasses.dataclass
class EvalOptions:
  data_dir: str
  dataset: str | None = None  # override the task's dataset name (e.g. synthetic/tiny)
  split: str | None = None
  limit: int | None = None  # evaluate only the first N images / episodes
  threshold: float | None = None  # fix the threshold instead of reporting the best
  fold: int | None = None  # one-shot folds (default: all four)
  episodes: int = 1000  # one-shot episodes per fold
  seed: int = 0
  background_scale: float = 3.0  # zero-shot: the background prompt's probability is scaled by this
  unseen: tuple[int, ...] = zero_shot.DEFAULT_SPLITS  # zero-shot: JoEm's unseen-n splits to report
  templates: tuple[str, ...] | None = None  # a prompt ensemble for text prompts (None: the raw prompt)
  progress: bool = True


class ModelPredictor:
  """What the protocols need from a model: prompt conditions, and probabilities at the image's size.
  (Tests substitute an oracle with the same three methods.)"""

  def __init__(self, model, templates=None):
    self.model, self.templates = model, templates

  def text(self, prompts):
    return self.model.encode_text(prompts, templates=self.templates)

  def visual(self, pairs):
    return self.model.encode_visual(pairs)

  def probabilities(self, image: np.ndarray, cond) -> np.ndarray:
    """[P, H, W] probabilities at the image's own size for P conditions (one vision pass), resized
    with align_corners=True as the original evaluation (`FixedIntervalMetrics(resize_pred=True)`)."""
    return self.model.predict_conditions([image], cond, align_corners=True)[0]

  def square_probabilities(self, image: np.ndarray, cond) -> np.ndarray:
    """[P, S, S] probabilities for the image squashed to the model's S x S as the original's PhraseCut
    test set feeds it (datasets/phrasecut.py `load_sample` with aug_crop=False: torch bilinear,
    align_corners=True, on float pixels, then ImageNet normalisation)."""
    size = self.model.image_size
    pixels = preprocess.normalize(preprocess.resize_aligned(np.asarray(image), size))
    return self._square(pixels, cond)

  def zero_shot_probabilities(self, image: np.ndarray, cond) -> np.ndarray:
    """[P, S, S] probabilities for the image as the original's PASCAL zero-shot feeds it
    (`zero_shot.original_pixels`: normalised at full size, then bilinear with align_corners=False)."""
    return self._square(zero_shot.original_pixels(image, self.model.image_size), cond)

  def _square(self, pixels: np.ndarray, cond) -> np.ndarray:
    """[P, S, S] sigmoid probabilities for one image's normalised S x S pixels."""
    logits = np.asarray(self.model.decode(self.model.encode_images(pixels[None]), cond)[0], np.float32)
    return 0.5 * (np.tanh(0.5 * logits) + 1.0)  # the sigmoid, overflow-free


class NoPromptPredictor(ModelPredictor):
  """The prompt-withheld ablation: every condition is zero, so the decoder never sees the prompt."""

  def text(self, prompts):
    return np.zeros((len(prompts), self.model.config.projection_dim), np.float32)

  visual = text


def binary_numbers(acc: Accumulator, threshold: float | None) -> dict:
  """Curves plus the values at the best (or fixed) threshold and at 0.1/0.2/0.3/0.5."""
  r = acc.result()
  out = {"curves": {k: np.asarray(v).tolist() for k, v in r.items() if k != "ap"}, "ap": r["ap"]}
  for name in ("miou", "iou_fg", "iou_bin"):
    t, v = at_threshold(r, name, threshold)
    out[name] = {"value": v, "threshold": t}
    out[name]["fixed"] = {str(ft): at_threshold(r, name, ft)[1] for ft in FIXED_THRESHOLDS}
  return out


def average_numbers(parts: list[dict]) -> dict:
  """The mean of several `binary_numbers` results (e.g. one per fold, as the paper averages folds): each
  metric's value and fixed-threshold values averaged, `threshold` None (the folds' best ones differ),
  and the mean AP."""
  out = {"ap": float(np.mean([p["ap"] for p in parts]))}
  for name in ("miou", "iou_fg", "iou_bin"):
    fixed = {t: float(np.mean([p[name]["fixed"][t] for p in parts])) for t in parts[0][name]["fixed"]}
    out[name] = {"value": float(np.mean([p[name]["value"] for p in parts])), "threshold": None, "fixed": fixed}
  return out


def _progress(it, total, desc, opts):
  return tqdm(it, total=total, desc=desc, unit="img", disable=not opts.progress)


def _limit(n, opts):
  return n if opts.limit is None else min(n, opts.limit)


def _mine(i: int) -> bool:
  """In a multi-host run each process scores every process_count-th item; the accumulators' allreduce
  then sums the parts (one process alone would wait forever in that allreduce)."""
  import jax

  return i % jax.process_count() == jax.process_index()


# ---- referring segmentation (PhraseCut, synthetic) -------------------------------------------------


def referring(model, opts: EvalOptions, default_dataset: str, default_split: str, *, at_model_size: bool = False):
  """Referring segmentation: every phrase of every image. at_model_size: score at the model's S x S
  against masks resized there (nearest, as torch), as the original's PhraseCut evaluation does;
  otherwise at each image's own size."""
  from clipseg_jax.input_pipeline import open_source

  source = open_source(opts.dataset or default_dataset, opts.split or default_split, data_dir=opts.data_dir)
  acc, examples = Accumulator(), []
  n = _limit(len(source), opts)
  for i in _progress(range(n), n, default_dataset, opts):
    if not _mine(i):
      continue
    record = source[i]
    image, masks, cond = record["image"], record["masks"], model.text(record["phrases"])
    if at_model_size:
      probs = model.square_probabilities(image, cond)
      size = probs.shape[-1]  # the truth goes to the model's size (the image too, for the picture)
      image, masks = resize_nearest(image, size), [resize_nearest(np.asarray(m), size) for m in masks]
    else:
      probs = model.probabilities(image, cond)
    for k, (mask, prob) in enumerate(zip(masks, probs)):
      acc.add(confusion_counts(prob, mask.astype(np.uint8))[None], [("sample", i, k)])  # class = sample
    if len(examples) < N_EXAMPLES:  # one per image, for variety
      examples.append((image, probs[0], masks[0], record["phrases"][0]))
  acc = acc.allreduce()
  numbers = binary_numbers(acc, opts.threshold)
  numbers["samples"], numbers["images"] = len(acc.per_class), n
  return numbers, examples


def phrasecut(model, opts):
  """As the original's score.py: the test images squashed to the model's size, scored there."""
  return referring(model, opts, "phrasecut", "test", at_model_size=True)


def synthetic(model, opts):
  return referring(model, opts, "synthetic", "test")


# ---- PASCAL VOC zero-shot: evaluation/zero_shot.py ------------------------------------------------------

pascal_zeroshot = zero_shot.pascal_zeroshot


def _nan_to_none(values):
  return [None if not np.isfinite(v) else float(v) for v in values]


# ---- one-shot (PASCAL-5i, COCO-20i): evaluation/one_shot.py ---------------------------------------------

from clipseg_jax.evaluation.one_shot import coco20i, pascal5i  # noqa: E402

PROTOCOLS = {
  "phrasecut": phrasecut,
  "pascal_zeroshot": pascal_zeroshot,
  "pascal5i": pascal5i,
  "coco20i": coco20i,
  "synthetic": synthetic,
}
VISUAL_TASKS = {"pascal5i", "coco20i"}


def predictor_for(model, withhold_prompt: bool | None = None, templates=None) -> ModelPredictor:
  """The predictor for a ClipSeg: the prompt-withheld ablation when asked, or when the checkpoint was
  trained that way (its config records `withhold_prompt`, written by the trainer); `templates`: a
  prompt ensemble for the text prompts."""
  if withhold_prompt is None:
    withhold_prompt = bool(model.config.extra.get("withhold_prompt", False))
  return (NoPromptPredictor if withhold_prompt else ModelPredictor)(model, templates)


def check_model_fits(model, task: str):
  """A clear error before any compute when the checkpoint cannot do the task (the trainer records the
  prompt kinds a decoder saw in its config's `trained_prompts`)."""
  trained = model.config.extra.get("trained_prompts", ["text", "visual"])
  if task in VISUAL_TASKS and "visual" not in trained:
    raise ValueError(
      f"task {task!r} prompts with support images, but this checkpoint was trained on "
      f"{'/'.join(trained)} prompts only (config.json trained_prompts)"
    )


def run_protocol(model, task: str, opts: EvalOptions):
  """Run `task` with a ClipSeg (or any object with `text`, `visual` and `probabilities`)."""
  if task not in PROTOCOLS:
    raise ValueError(f"unknown task {task!r}; choose one of {', '.join(PROTOCOLS)}")
  if hasattr(model, "config"):
    check_model_fits(model, task)
    model = predictor_for(model, templates=opts.templates)
  return PROTOCOLS[task](model, opts)
