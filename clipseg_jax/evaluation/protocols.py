"""The paper's evaluation protocols (its section 4, scored as the original's `score.py`).

Each protocol is `protocol(predictor, opts: EvalOptions) -> (numbers, examples)`: `predictor` has
`text`, `visual` and the probability methods (`ModelPredictor` around a ClipSeg, from `predictor_for`;
tests pass oracles), `numbers` is a JSON-ready dict and `examples` a few (image, prediction, truth, label)
tuples for the pictures. Every protocol encodes each query image once for all its prompts and scores where
the original does: PhraseCut and PASCAL zero-shot at the model's S x S (labels resized there by nearest),
the others at the ground truth's size (probabilities resized bilinearly, align_corners=True).
"""

from __future__ import annotations

import numpy as np

from clipseg_jax.evaluation.common import (  # noqa: F401 (the protocols' public names, re-exported)
  N_EXAMPLES,
  EvalOptions,
  average_numbers,
  binary_numbers,
  limit,
  mine,
  progress,
)
from clipseg_jax.evaluation.one_shot import coco20i, pascal5i
from clipseg_jax.evaluation.predictor import ModelPredictor, NoPromptPredictor, predictor_for  # noqa: F401
from clipseg_jax.evaluation.zero_shot import pascal_zeroshot
from clipseg_jax.metrics import Accumulator
from clipseg_jax.metrics.binary import confusion_counts
from clipseg_jax.prompts import resize_nearest

# ---- referring segmentation (PhraseCut, synthetic) -------------------------------------------------


def referring(model, opts: EvalOptions, default_dataset: str, default_split: str, *, at_model_size: bool = False):
  """Referring segmentation: every phrase of every image. at_model_size: score at the model's S x S
  against masks resized there (nearest, as torch), as the original's PhraseCut evaluation does;
  otherwise at each image's own size."""
  from clipseg_jax.input_pipeline import open_source

  source = open_source(opts.dataset or default_dataset, opts.split or default_split, data_dir=opts.data_dir)
  acc, examples = Accumulator(), []
  n = limit(len(source), opts)
  for i in progress(range(n), n, default_dataset, opts):
    if not mine(i):
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


# PASCAL zero-shot: evaluation/zero_shot.py; one-shot (PASCAL-5i, COCO-20i): evaluation/one_shot.py

PROTOCOLS = {
  "phrasecut": phrasecut,
  "pascal_zeroshot": pascal_zeroshot,
  "pascal5i": pascal5i,
  "coco20i": coco20i,
  "synthetic": synthetic,
}
VISUAL_TASKS = {"pascal5i", "coco20i"}


def check_model_fits(model, task: str):
  """A clear error before any compute when the checkpoint cannot do the task (its manifest records the
  prompt kinds the decoder saw: `trained_prompts`)."""
  trained = model.manifest.trained_prompts
  if task in VISUAL_TASKS and "visual" not in trained:
    raise ValueError(
      f"task {task!r} prompts with support images, but this checkpoint was trained on "
      f"{'/'.join(trained)} prompts only (its manifest's trained_prompts)"
    )


def run_protocol(model, task: str, opts: EvalOptions):
  """Run `task` with a ClipSeg (or any object with `text`, `visual` and `probabilities`)."""
  if task not in PROTOCOLS:
    raise ValueError(f"unknown task {task!r}; choose one of {', '.join(PROTOCOLS)}")
  if hasattr(model, "config"):
    check_model_fits(model, task)
    model = predictor_for(model, templates=opts.templates)
  return PROTOCOLS[task](model, opts)
