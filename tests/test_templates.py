"""Prompt ensembles at inference: each text prompt's embedding averaged over templates, checked against
transformers' text embeddings of the filled-in templates."""

import numpy as np
import pytest

from clipseg_jax.prompts import fill_templates

TEMPLATES = ("a photo of a {}.", "{}", "an image of the {}.")


def test_fill_templates_is_text_major():
  assert fill_templates(["cat", "red dog"], ["a {}.", "{}"]) == ["a cat.", "cat", "a red dog.", "red dog"]
  assert fill_templates(["cat"], "the {}") == ["the cat"]


@pytest.mark.parametrize("bad", [[], ["no slot"], ["{} and {}"], ["{0}"], ["a {x}"], [3]])
def test_bad_templates_are_refused(bad):
  with pytest.raises(ValueError, match="template"):
    fill_templates(["cat"], bad)


def test_ensemble_is_the_mean_of_transformers_embeddings(tiny_checkpoint, torch):
  from clipseg_jax import load_model
  from clipseg_jax.tokenizer import tokenize

  directory, ref = tiny_checkpoint
  model = load_model(directory)
  texts = ["cat", "a striped sofa"]
  filled = fill_templates(texts, TEMPLATES)
  ids, mask = tokenize(model.tokenizer, filled, model.config.text_config.max_position_embeddings)
  with torch.no_grad():
    emb = ref.get_conditional_embeddings(
      batch_size=len(filled), input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long()
    ).numpy()
  expected = emb.reshape(len(texts), len(TEMPLATES), -1).mean(1)
  ours = np.asarray(model.encode_text(texts, templates=TEMPLATES))
  np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=1e-5)
  assert not np.allclose(ours, np.asarray(model.encode_text(texts)), atol=1e-3)  # the ensemble does something

  image = np.random.default_rng(0).integers(0, 255, (40, 56, 3), np.uint8)
  probs = model.predict(image, texts, templates=TEMPLATES)
  np.testing.assert_allclose(probs, model.predict_conditions([image], expected), atol=1e-5)


def test_zero_shot_protocol_passes_templates(tiny_model):
  from clipseg_jax.evaluation.protocols import EvalOptions, predictor_for

  opts = EvalOptions(data_dir="unused", templates=TEMPLATES)
  predictor = predictor_for(tiny_model, templates=opts.templates)
  np.testing.assert_allclose(
    np.asarray(predictor.text(["cat"])), np.asarray(tiny_model.encode_text(["cat"], templates=TEMPLATES)), atol=0
  )
