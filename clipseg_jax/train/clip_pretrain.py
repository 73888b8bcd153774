"""Contrastive (CLIP) pretraining of a small CLIP on the synthetic scenes: the embedded backbone.

Each image is paired with a template-wrapped phrase naming one of its objects; the loss is CLIP's
symmetric cross-entropy over the in-batch image-text similarities with a learned temperature.
The result is written as an HF `CLIPModel` directory (config.json + model.safetensors), the same
layout as openai/clip-vit-base-patch16, so everything that takes a CLIP takes it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image
from tqdm import tqdm

from clipseg_jax import preprocess
from clipseg_jax.config import ClipSegConfig, TextConfig, VisionConfig
from clipseg_jax.models.clip import CLIP
from clipseg_jax.weights import hf, io


def clip_config(cfg) -> ClipSegConfig:
  return ClipSegConfig(text_config=TextConfig(**cfg.text), vision_config=VisionConfig(**cfg.vision),
                       projection_dim=cfg.projection_dim, extract_layers=(cfg.vision.num_hidden_layers - 1,),
                       reduce_dim=16)


def clip_loss(image_embeds, text_embeds, logit_scale):
  """CLIP's symmetric InfoNCE over L2-normalised embeddings."""
  img = image_embeds / jnp.linalg.norm(image_embeds, axis=-1, keepdims=True)
  txt = text_embeds / jnp.linalg.norm(text_embeds, axis=-1, keepdims=True)
  logits = jnp.exp(jnp.minimum(logit_scale, np.log(100.0))) * img @ txt.T
  labels = jnp.arange(logits.shape[0])
  return (optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
          + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()) / 2


def load_pairs(cfg):
  """Images resized to the model size and, per image, the phrases naming one of its objects."""
  from input_pipeline import open_source
  source = open_source(cfg.data.name, cfg.data.split, data_dir=os.path.expanduser(cfg.data.data_dir))
  images, phrases = [], []
  for i in tqdm(range(len(source)), desc="loading scenes", unit="img"):
    r = source[i]
    objects = {}  # phrases grouped by the object (mask) they name
    for p, m in zip(r["phrases"], r["masks"]):
      if m.any():
        objects.setdefault(np.packbits(m).tobytes(), []).append(p)
    if objects:
      images.append(np.asarray(Image.fromarray(r["image"]).resize((cfg.image_size,) * 2, Image.BILINEAR)))
      phrases.append(list(objects.values()))
  return np.stack(images), phrases


def caption(objects: list[list[str]], rng: np.random.Generator) -> str:
  """One phrase for each object of the scene, in random order: a text unique to the scene, so the
  contrastive loss must tell scenes apart by every attribute (shapes too, not only colours)."""
  names = [group[rng.integers(len(group))] for group in objects]
  return "a picture of " + ", ".join(names[k] for k in rng.permutation(len(names)))


def text_for(objects: list[list[str]], rng: np.random.Generator, caption_prob: float, templates) -> str:
  """A caption of the scene (with probability `caption_prob`), else a templated phrase naming one of
  its objects: object first, then one of its phrases. With `caption_prob` 0 the phrase is drawn from
  all of the scene's phrases at once, as for the first shipped weights (same random draws)."""
  if not caption_prob:
    flat = [p for group in objects for p in group]
    return str(rng.choice(templates)).format(flat[rng.integers(len(flat))])
  if rng.random() < caption_prob:
    return caption(objects, rng)
  group = objects[rng.integers(len(objects))]
  return str(rng.choice(templates)).format(group[rng.integers(len(group))])


def pretrain(cfg, workdir) -> dict:
  from clipseg_jax.tokenizer import load_tokenizer
  from input_pipeline.pcplus import TEMPLATES
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  config = clip_config(cfg)
  model = CLIP(config)
  images, phrases = load_pairs(cfg)
  tok = load_tokenizer()
  rng = np.random.default_rng(cfg.seed)
  s = cfg.image_size
  params = model.init(jax.random.PRNGKey(cfg.seed), jnp.zeros((1, s, s, 3)), jnp.zeros((1, 4), jnp.int32))["params"]
  warmup = min(cfg.optim.warmup_steps, cfg.total_steps // 10)
  schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.optim.learning_rate, warmup, cfg.total_steps,
                                                cfg.optim.end_learning_rate)
  tx = optax.adamw(schedule, weight_decay=cfg.optim.weight_decay)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, pixels, ids, mask):
    def loss_fn(p):
      img, txt = model.apply({"params": p}, preprocess.normalize(pixels), ids, mask)
      return clip_loss(img, txt, p["logit_scale"])
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  bar = tqdm(range(cfg.total_steps), desc="pretrain CLIP")
  for i in bar:
    idx = rng.choice(len(images), cfg.batch_size, replace=False)
    texts = [text_for(phrases[j], rng, cfg.get("caption_prob", 0.0), TEMPLATES) for j in idx]
    t = tok(texts, padding="max_length", truncation=True, max_length=cfg.max_text_length, return_tensors="np")
    params, opt_state, loss = step(params, opt_state, images[idx], jnp.asarray(t["input_ids"], jnp.int32),
                                   jnp.asarray(t["attention_mask"], jnp.int32))
    losses.append(float(loss))
    if (i + 1) % cfg.log_every == 0:
      bar.set_postfix(loss=f"{np.mean(losses[-cfg.log_every:]):.3f}")
  export_clip(config, params, workdir / "clip", np.dtype(cfg.export_dtype))
  summary = {"final_loss": float(np.mean(losses[-cfg.log_every:])), "steps": cfg.total_steps}
  (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
  return summary


def clip_config_dict(config: ClipSegConfig) -> dict:
  """An HF `CLIPConfig` dict for the towers of `config`."""
  d = config.to_dict()
  text, vision = dict(d["text_config"]), dict(d["vision_config"])
  text["model_type"], vision["model_type"] = "clip_text_model", "clip_vision_model"
  return {"model_type": "clip", "architectures": ["CLIPModel"], "text_config": text, "vision_config": vision,
          "projection_dim": config.projection_dim, "logit_scale_init_value": config.logit_scale_init_value}


def export_clip(config: ClipSegConfig, clip_params, out_dir, dtype=np.float32):
  """Write CLIP params as an HF CLIPModel directory (keys without the `clip.` prefix)."""
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  state = {k: v.astype(dtype) for k, v in hf.to_hf(jax.device_get(clip_params)).items()}
  io.write_safetensors(state, out / "model.safetensors")
  (out / "config.json").write_text(json.dumps(clip_config_dict(config), indent=2, sort_keys=True) + "\n")
  return out
