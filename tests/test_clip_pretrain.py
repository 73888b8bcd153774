"""The embedded backbone: the contrastive pretraining recipe, its HF CLIP export, the shipped weights."""

from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from clipseg_jax.train.clip_pretrain import clip_loss, pretrain
from clipseg_jax.train.recipe_model import model_config
from clipseg_jax.train.recipes import load_config
from clipseg_jax.weights.io import EMBEDDED

ROOT = Path(__file__).resolve().parents[1]


def test_clip_loss_prefers_matching_pairs():
  rng = np.random.RandomState(0)
  emb = rng.randn(6, 8).astype(np.float32)
  matched = float(clip_loss(emb, emb, np.log(10.0)))
  shuffled = float(clip_loss(emb, emb[::-1], np.log(10.0)))
  assert matched < shuffled and matched < np.log(6)


def test_clip_loss_counts_identical_texts_as_matches():
  """Two images with the same caption: with `same` it does not matter which copy of the text each is
  paired with; with diagonal targets it does."""
  rng = np.random.RandomState(0)
  img = rng.randn(5, 8).astype(np.float32)
  txt = img + 0.3 * rng.randn(5, 8).astype(np.float32)
  swapped = txt[[1, 0, 2, 3, 4]]
  same = np.eye(5, dtype=bool)
  same[0, 1] = same[1, 0] = True
  loss = lambda t, s: float(clip_loss(img, t, np.log(20.0), s))
  assert loss(txt, same) == pytest.approx(loss(swapped, same), rel=1e-6)
  assert loss(swapped, None) > loss(txt, None) + 0.1


@pytest.mark.slow  # a pretraining run (16 s)
def test_image_embeddings_poolings():
  """ "cls" is CLIP's own image embedding; "mean" averages the last block's patch tokens (not the
  class token) through the same post-layernorm and projection."""
  import jax.numpy as jnp

  from clipseg_jax.models.clip import CLIP
  from clipseg_jax.train.clip_pretrain import clip_config, image_embeddings

  cfg = load_config(
    "synthetic_clip",
    [
      "image_size=32",
      "vision.image_size=32",
      "vision.hidden_size=32",
      "vision.intermediate_size=64",
      "text.hidden_size=32",
      "text.intermediate_size=64",
      "projection_dim=16",
    ],
  )
  model = CLIP(clip_config(cfg))
  pixels = np.random.RandomState(0).randn(2, 32, 32, 3).astype(np.float32)
  params = model.init(jax.random.PRNGKey(0), pixels, jnp.zeros((1, 4), jnp.int32))["params"]
  cls, mean = image_embeddings(model, params, pixels, ("cls", "mean"))
  np.testing.assert_allclose(cls, model.apply({"params": params}, pixels, method=CLIP.image_embeds), atol=1e-6)
  states, _ = model.apply({"params": params}, pixels, method=CLIP.image_states)
  x = np.asarray(states[-1][:, 1:]).mean(1)
  ln = params["vision_model"]["post_layernorm"]
  x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * ln["scale"] + ln["bias"]
  np.testing.assert_allclose(mean, x @ params["visual_projection"]["kernel"], rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="unknown pooling 'max'"):
    image_embeddings(model, params, pixels, ("max",))


def test_pool_scenes_are_captioned():
  """Pool scenes come from their own seed stream, are deterministic, and their caption names each
  visible object (a single one for single-object scenes)."""
  from clipseg_jax.input_pipeline import synthetic
  from clipseg_jax.train.clip_pretrain import render

  scenes = [render(0, i, 96, 64, 0.5) for i in range(12)]
  assert all(im.shape == (64, 64, 3) and im.dtype == np.uint8 for im, _ in scenes)
  counts = [c.count(", ") + c.count(" and ") + 1 for _, c in scenes]
  assert all(c.startswith("a picture of a ") for _, c in scenes) and 1 in counts and max(counts) > 1
  np.testing.assert_array_equal(render(0, 3, 96, 64, 0.5)[0], scenes[3][0])
  dataset_scene = synthetic.scene_examples(0, 3, 96)[0][0]["image"]
  assert not np.array_equal(np.asarray(Image.fromarray(dataset_scene).resize((64, 64), Image.BILINEAR)), scenes[3][0])


@pytest.mark.slow  # a pretraining run (30 s)
def test_pretrain_exports_a_transformers_clip(tmp_path, torch):
  """A few steps of the recipe on tiny towers; transformers' CLIPModel loads the export and computes
  the same embeddings as our towers."""
  from transformers import CLIPModel

  from clipseg_jax.models.clip import CLIP
  from clipseg_jax.train.clip_pretrain import clip_config
  from clipseg_jax.weights.backbone import clip_params

  cfg = load_config(
    "synthetic_clip",
    [
      "data.pool=16",
      "data.render_size=96",
      "total_steps=3",
      "poolings=('cls','mean')",
      "batch_size=8",
      "log_every=1",
      "image_size=64",
      "vision.image_size=64",
      "vision.hidden_size=32",
      "vision.intermediate_size=64",
      "text.hidden_size=32",
      "text.intermediate_size=64",
      "projection_dim=16",
      "export_dtype=float32",
    ],
  )
  summary = pretrain(cfg, tmp_path / "run", show=False)
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
  cfg = load_config("synthetic")
  config = model_config(cfg.model)
  assert config.vision_config.image_size == cfg.data.pcplus.image_size
  assert max(config.extract_layers) < config.vision_config.num_hidden_layers


# Scene indices that neither the dataset's splits (0-39,999,999), the pretraining pool
# (clip_pretrain.POOL_STREAM) nor probe_clip.py's probes use.
ZERO_SHOT_STREAM = 70_000_000


def zero_shot_accuracy(source: str, n: int = 48) -> tuple[float, float]:
  """(colour, shape) accuracy of a small CLIP naming single objects zero-shot: each scene's image
  embedding against the pretraining captions of every (size, colour, shape)."""
  from clipseg_jax import preprocess
  from clipseg_jax.input_pipeline import synthetic
  from clipseg_jax.models.clip import CLIP
  from clipseg_jax.tokenizer import load_tokenizer
  from clipseg_jax.train.clip_pretrain import clip_config
  from clipseg_jax.weights.backbone import clip_params

  cfg = load_config("synthetic_clip")
  config = clip_config(cfg)
  params = clip_params(config, source)
  size = cfg.image_size
  scenes = [
    synthetic.make_scene(np.random.default_rng([cfg.seed, ZERO_SHOT_STREAM + i]), cfg.data.render_size, n_objects=1)
    for i in range(n)
  ]
  pixels = np.stack([preprocess.resize_square(im, size) for im, _ in scenes])
  names = [(z, c, s) for z in synthetic.SIZES for c in synthetic.COLORS for s in synthetic.SHAPES]
  captions = [synthetic.caption([synthetic.SceneObject(c, s, z, (0.0, 0.0), 1.0, None)]) for z, c, s in names]
  ids = load_tokenizer()(captions, padding="max_length", max_length=cfg.max_text_length, return_tensors="np")
  module = CLIP(config)
  img = np.asarray(module.apply({"params": params}, preprocess.normalize(pixels), method=CLIP.image_embeds))
  txt = np.asarray(module.apply({"params": params}, ids["input_ids"], ids["attention_mask"], method=CLIP.text_embeds))
  best = [names[i] for i in np.argmax(img @ txt.T / np.linalg.norm(txt, axis=1), axis=1)]
  truth = [objects[0] for _, objects in scenes]
  return (
    float(np.mean([b[1] == o.color for b, o in zip(best, truth)])),
    float(np.mean([b[2] == o.shape for b, o in zip(best, truth)])),
  )


@pytest.mark.slow  # a zero-shot probe of the embedded CLIP (10 s)
def test_shipped_backbone_is_pretrained():
  """The shipped CLIP names an object's colour and shape zero-shot (measured: 1.0 and 1.0 on these
  48 scenes). A random CLIP of the same shape scores 0.12 and 0.29, about chance (1/6, 1/4); the
  earlier 1800-step backbone 1.0 and 0.88."""
  colour, shape = zero_shot_accuracy("embedded:synthetic-clip")
  assert colour >= 0.9 and shape >= 0.9, (colour, shape)
