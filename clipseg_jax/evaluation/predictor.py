"""The model side of the protocols: prompt conditions and probabilities from a ClipSeg, as each of the
original's test sets feeds its images (tests substitute oracles with the same methods)."""

from __future__ import annotations

import numpy as np

from clipseg_jax import preprocess
from clipseg_jax.evaluation.zero_shot import original_pixels


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
    return self._square(original_pixels(image, self.model.image_size), cond)

  def _square(self, pixels: np.ndarray, cond) -> np.ndarray:
    """[P, S, S] sigmoid probabilities for one image's normalised S x S pixels."""
    logits = np.asarray(self.model.decode(self.model.encode_images(pixels[None]), cond)[0], np.float32)
    return preprocess.sigmoid(logits)


class NoPromptPredictor(ModelPredictor):
  """The prompt-withheld ablation: every condition is zero, so the decoder never sees the prompt."""

  def text(self, prompts):
    return np.zeros((len(prompts), self.model.config.projection_dim), np.float32)

  visual = text


def predictor_for(model, withhold_prompt: bool | None = None, templates=None) -> ModelPredictor:
  """The predictor for a ClipSeg: the prompt-withheld ablation when asked, or when the checkpoint was
  trained that way (its manifest records `withhold_prompt`, written by the trainer); `templates`: a
  prompt ensemble for the text prompts."""
  if withhold_prompt is None:
    withhold_prompt = model.manifest.withhold_prompt
  return (NoPromptPredictor if withhold_prompt else ModelPredictor)(model, templates)
