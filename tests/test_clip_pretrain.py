"""The embedded backbone: the contrastive pretraining recipe, its HF CLIP export, the shipped weights."""

from pathlib import Path

import numpy as np
import pytest
import torch

from clipseg_jax.train.clip_pretrain import clip_loss, pretrain
from clipseg_jax.train.configs import load_config
from clipseg_jax.train.model import EMBEDDED, model_config
from input_pipeline import build

ROOT = Path(__file__).resolve().parents[1]


def test_clip_loss_prefers_matching_pairs():
  rng = np.random.RandomState(0)
  emb = rng.randn(6, 8).astype(np.float32)
  matched = float(clip_loss(emb, emb, np.log(10.0)))
  shuffled = float(clip_loss(emb, emb[::-1], np.log(10.0)))
  assert matched < shuffled and matched < np.log(6)


def test_captions_name_every_object_once():
  from clipseg_jax.train.clip_pretrain import text_for
  objects = [["red circle", "the red object"], ["blue star", "the star on the left"], ["green square"]]
  rng = np.random.default_rng(0)
  texts = [text_for(objects, rng, 1.0, ("a photo of a {}.",)) for _ in range(20)]
  for t in texts:
    names = t.removeprefix("a picture of ").split(", ")
    assert len(names) == 3 and all(sum(n in group for n in names) == 1 for group in objects)
  assert len(set(texts)) > 3  # phrases and order vary
  singles = {text_for(objects, rng, 0.0, ("a photo of a {}.",)) for _ in range(50)}
  assert singles <= {f"a photo of a {p}." for group in objects for p in group} and len(singles) > 3


def test_pretrain_exports_a_transformers_clip(tmp_path):
  """A few steps of the recipe on tiny towers; transformers' CLIPModel loads the export and computes
  the same embeddings as our towers."""
  from transformers import CLIPModel

  from clipseg_jax.models.clip import CLIP
  from clipseg_jax.train.clip_pretrain import clip_config
  from clipseg_jax.train.model import clip_params
  build("synthetic/tiny", data_dir=tmp_path / "tfds")
  cfg = load_config(ROOT / "experiments" / "configs" / "synthetic_clip.py", [
      f"data.data_dir={tmp_path / 'tfds'}", "data.name=synthetic/tiny", "total_steps=3", "batch_size=8",
      "log_every=1", "image_size=64", "vision.image_size=64", "vision.hidden_size=32", "vision.intermediate_size=64",
      "text.hidden_size=32", "text.intermediate_size=64", "projection_dim=16", "export_dtype=float32"])
  summary = pretrain(cfg, tmp_path / "run")
  assert np.isfinite(summary["final_loss"])
  ref = CLIPModel.from_pretrained(tmp_path / "run" / "clip", attn_implementation="eager").eval()
  config = clip_config(cfg)
  params = clip_params(config, str(tmp_path / "run" / "clip"))
  pixels = np.random.RandomState(0).randn(2, 64, 64, 3).astype(np.float32)
  ids = np.array([[49406, 320, 2368, 49407], [49406, 1125, 539, 49407]])
  ours_img, ours_txt = CLIP(config).apply({"params": params}, pixels, ids)
  with torch.no_grad():
    want_img = ref.get_image_features(pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2))).pooler_output
    want_txt = ref.get_text_features(input_ids=torch.from_numpy(ids)).pooler_output
  np.testing.assert_allclose(ours_img, want_img.numpy(), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(ours_txt, want_txt.numpy(), rtol=1e-4, atol=1e-5)


def test_shipped_backbone():
  """The embedded CLIP ships in the package (< 10 MB) and the synthetic config builds on it."""
  path = EMBEDDED["embedded:synthetic-clip"]
  assert (path / "model.safetensors").stat().st_size <= 10 * 2**20
  cfg = load_config(ROOT / "experiments" / "configs" / "synthetic.py")
  config = model_config(cfg.model)
  assert config.vision_config.image_size == cfg.data.pcplus.image_size
  assert max(config.extract_layers) < config.vision_config.num_hidden_layers
