"""What a small CLIP's features know about the synthetic scenes' attributes: linear probes.

For each vision block, a softmax-regression probe on the patch tokens under each object (the residual
stream the decoder reads) predicts the object's colour and shape on held-out scenes; for the text
tower, the mean cosine similarity between embeddings of phrases that differ only in shape or only in
colour. A decoder can only follow a phrase whose distinctions both towers draw.

  python experiments/scripts/probe_clip.py [--clip embedded:synthetic-clip] [--scenes 600]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image

from clipseg_jax import preprocess
from clipseg_jax.configs import synthetic as synthetic_config
from clipseg_jax.input_pipeline.synthetic import COLORS, SHAPES, make_scene
from clipseg_jax.models.clipseg import ClipSegModel
from clipseg_jax.tokenizer import load_tokenizer
from clipseg_jax.train.recipe_model import model_config
from clipseg_jax.weights.backbone import clip_params

PROBE_STREAM = 80_000_000  # scene indices unused by the dataset's splits and the pretraining pool


def scene_tokens(module, params, size, n, seed):
  """Per layer: the patch tokens covered (> half) by each visible object; labels (colour, shape)."""
  acts_fn = jax.jit(lambda p, x: module.apply({"params": p}, x, method=ClipSegModel.activations))
  grid = size // module.config.vision_config.patch_size
  scenes = [make_scene(np.random.default_rng([seed, PROBE_STREAM + i])) for i in range(n)]
  images = np.stack([preprocess.resize_square(im, size) for im, _ in scenes])
  acts = [
    np.concatenate(a)
    for a in zip(
      *(
        [np.asarray(x) for x in acts_fn(params, preprocess.normalize(jnp.asarray(images[s : s + 32])))]
        for s in range(0, n, 32)
      )
    )
  ]
  tokens, labels = [[] for _ in acts], []
  for i, (_, objects) in enumerate(scenes):
    for o in objects:
      cover = np.asarray(Image.fromarray(o.mask.astype(np.float32)).resize((grid, grid), Image.BOX))
      under = cover.reshape(-1) > 0.5
      for layer, a in enumerate(acts):
        tokens[layer].append(a[i, 1:][under])
      labels.append(np.repeat([[list(COLORS).index(o.color), SHAPES.index(o.shape)]], under.sum(), 0))
  return [np.concatenate(t) for t in tokens], np.concatenate(labels)


def probe_accuracy(x_train, y_train, x_test, y_test, classes, steps=500):
  """Held-out accuracy of a softmax regression on standardised features."""
  mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
  x_train, x_test = (x_train - mu) / sd, (x_test - mu) / sd
  w = {"w": jnp.zeros((x_train.shape[1], classes)), "b": jnp.zeros(classes)}
  tx = optax.adam(1e-2)
  loss = lambda w: optax.softmax_cross_entropy_with_integer_labels(x_train @ w["w"] + w["b"], y_train).mean()

  @jax.jit
  def step(w, state):
    updates, state = tx.update(jax.grad(loss)(w), state)
    return optax.apply_updates(w, updates), state

  state = tx.init(w)
  for _ in range(steps):
    w, state = step(w, state)
  return float((np.argmax(x_test @ np.asarray(w["w"]) + np.asarray(w["b"]), 1) == y_test).mean())


def text_similarity(module, params, groups):
  tok = load_tokenizer()
  fn = jax.jit(lambda p, i, m: module.apply({"params": p}, i, m, method=ClipSegModel.text_embeddings))
  out = {}
  for name, texts in groups.items():
    t = tok(texts, padding="max_length", max_length=16, return_tensors="np")
    e = np.array(fn(params, jnp.asarray(t["input_ids"], jnp.int32), jnp.asarray(t["attention_mask"], jnp.int32)))
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    sim = e @ e.T
    out[name] = float((sim.sum() - np.trace(sim)) / (len(texts) ** 2 - len(texts)))
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--clip", default="embedded:synthetic-clip", help="any CLIP source the training configs take")
  p.add_argument("--scenes", type=int, default=600, help="probe training scenes (a third as many held out)")
  args = p.parse_args()
  cfg = synthetic_config.get_config()
  cfg.model.clip = args.clip
  depth = model_config(cfg.model).vision_config.num_hidden_layers
  cfg.model.extract_layers = tuple(range(depth))
  config = model_config(cfg.model)
  module, params = ClipSegModel(config), {"clip": clip_params(config, args.clip)}
  size = cfg.data.pcplus.image_size
  train = scene_tokens(module, params, size, args.scenes, seed=1)
  test = scene_tokens(module, params, size, args.scenes // 3, seed=2)
  majority = [np.bincount(test[1][:, k]).max() / len(test[1]) for k in (0, 1)]  # squares cover more tokens
  print(
    f"{args.clip}: linear probes on patch tokens under each object (held-out accuracy; always "
    f"guessing the commonest class scores {majority[0]:.2f} colour, {majority[1]:.2f} shape)"
  )
  for layer in range(depth):
    colour, shape = (
      probe_accuracy(train[0][layer], train[1][:, k], test[0][layer], test[1][:, k], n)
      for k, n in ((0, len(COLORS)), (1, len(SHAPES)))
    )
    print(f"  block {layer}: colour {colour:.2f}  shape {shape:.2f}")
  sims = text_similarity(
    module,
    params,
    {
      "shapes only ('circle', 'square', ...)": list(SHAPES),
      "shapes, one colour ('red circle', 'red square', ...)": [f"red {s}" for s in SHAPES],
      "colours, one shape ('red circle', 'green circle', ...)": [f"{c} circle" for c in COLORS],
    },
  )
  print("text embeddings: mean cosine similarity between phrases that differ in")
  for name, value in sims.items():
    print(f"  {name:56s} {value:.3f}")


if __name__ == "__main__":
  main()
