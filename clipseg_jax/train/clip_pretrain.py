"""Contrastive (CLIP) pretraining of a small CLIP on synthetic scenes: the embedded backbone.

Scenes come straight from the synthetic generator (a seed stream disjoint from the dataset's splits),
each captioned by naming every visible object ("a picture of a small red circle and a large blue
star"); a share of them hold a single object. The loss is CLIP's symmetric cross-entropy over the
in-batch image-text similarities with a learned temperature, where every image whose caption is the
same text counts as a match (single-object captions repeat within a batch). Single objects are what
teaches the towers shapes: paired with one phrase per multi-object scene, the first recipe learnt
colours only (linear probes on its patch features told shapes apart at chance).
The result is written as an HF `CLIPModel` directory (config.json + model.safetensors), the same
layout as openai/clip-vit-base-patch16, so everything that takes a CLIP takes it.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from clipseg_jax import preprocess
from clipseg_jax.config import ClipSegConfig, TextConfig, VisionConfig
from clipseg_jax.models.clip import CLIP
from clipseg_jax.models.layers import layer_norm
from clipseg_jax.tokenizer import default_tokenizer, tokenize
from clipseg_jax.train.step import make_schedule
from clipseg_jax.weights import hf, io

POOL_STREAM = 90_000_000  # scene indices of the pretraining pool (the dataset's splits use 0-39,999,999)


def clip_config(cfg) -> ClipSegConfig:
  return ClipSegConfig(
    text_config=TextConfig(**cfg.text),
    vision_config=VisionConfig(**cfg.vision),
    projection_dim=cfg.projection_dim,
    extract_layers=(cfg.vision.num_hidden_layers - 1,),
    reduce_dim=16,
  )


def clip_loss(image_embeds, text_embeds, logit_scale, same=None):
  """CLIP's symmetric InfoNCE over L2-normalised embeddings. `same` [B, B] (bool) marks pairs whose
  texts are identical: each row's target spreads over them instead of the diagonal alone."""
  img = image_embeds / jnp.linalg.norm(image_embeds, axis=-1, keepdims=True)
  txt = text_embeds / jnp.linalg.norm(text_embeds, axis=-1, keepdims=True)
  logits = jnp.exp(jnp.minimum(logit_scale, np.log(100.0))) * img @ txt.T
  target = jnp.eye(logits.shape[0]) if same is None else same.astype(logits.dtype)
  target = target / target.sum(-1, keepdims=True)
  return (optax.softmax_cross_entropy(logits, target).mean() + optax.softmax_cross_entropy(logits.T, target).mean()) / 2


def image_embeddings(model: CLIP, params, pixels, poolings=("cls",)):
  """The image embedding of each pooling in `poolings`: "cls", CLIP's own (the class token after
  post_layernorm, projected), or "mean", the average of the last block's patch tokens through the same
  layer norm and projection (OpenCLIP's global average pooling). The exported CLIP stays a standard
  CLIP either way; the "mean" loss is what reaches the patch tokens CLIPSeg's decoder reads, which
  the class token's loss leaves without a gradient in the last block."""
  states, cls = model.apply({"params": params}, pixels, method=CLIP.image_states)
  out = []
  for pooling in poolings:
    if pooling == "cls":
      pooled = cls
    elif pooling == "mean":
      ln = layer_norm(model.config.vision_config.layer_norm_eps, None)
      pooled = ln.apply({"params": params["vision_model"]["post_layernorm"]}, states[-1][:, 1:].mean(1))
    else:
      raise ValueError(f"unknown pooling {pooling!r}: expected 'cls' or 'mean'")
    out.append(pooled @ params["visual_projection"]["kernel"])
  return out


def render(seed: int, index: int, render_size: int, size: int, single_object_prob: float):
  """One pool scene: (uint8 image [size, size, 3] rendered at `render_size` like the dataset's and
  resized like the decoder's inputs, its caption)."""
  from clipseg_jax.input_pipeline import synthetic

  rng = np.random.default_rng([seed, POOL_STREAM + index])
  n = 1 if rng.random() < single_object_prob else None
  image, objects = synthetic.make_scene(rng, render_size, n_objects=n)
  image = preprocess.resize_square(image, size)
  return image, synthetic.caption([o for o in objects if o.mask.any()])


def scene_pool(cfg, show: bool = True):
  """`cfg.data.pool` captioned scenes, rendered on all cores."""
  d = cfg.data
  args = [(cfg.seed, i, d.render_size, cfg.image_size, d.single_object_prob) for i in range(d.pool)]
  workers = min(len(os.sched_getaffinity(0)), max(1, d.pool // 256))
  progress = lambda it: tqdm(it, total=len(args), desc="rendering scenes", unit="img", disable=not show)
  if workers == 1:
    out = [render(*a) for a in progress(args)]
  else:  # spawned, not forked: forking a process that runs JAX's threads can deadlock
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as ex:
      out = list(progress(ex.map(_render_args, args, chunksize=64)))
  return np.stack([im for im, _ in out]), [c for _, c in out]


def _render_args(a):
  return render(*a)


def pretrain(cfg, workdir, show: bool = True) -> dict:
  """Run the recipe; writes WORKDIR/clip (HF CLIPModel) and WORKDIR/summary.json."""
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  config = clip_config(cfg)
  model = CLIP(config)
  start = time.perf_counter()
  images, captions = scene_pool(cfg, show)
  ids, mask = tokenize(default_tokenizer(), captions, cfg.max_text_length)
  # The whole pool lives on the device; each step gathers its batch there.
  pool = jax.device_put({"images": images, "ids": ids, "mask": mask})
  render_seconds = time.perf_counter() - start
  s = cfg.image_size
  params = model.init(jax.random.PRNGKey(cfg.seed), jnp.zeros((1, s, s, 3)), jnp.zeros((1, 4), jnp.int32))["params"]
  warmup = min(cfg.optim.warmup_steps, cfg.total_steps // 10)
  schedule = make_schedule(cfg.optim.learning_rate, cfg.optim.end_learning_rate, warmup, cfg.total_steps)
  tx = optax.adamw(schedule, weight_decay=cfg.optim.weight_decay)
  opt_state = tx.init(params)
  poolings = tuple(cfg.poolings)

  @jax.jit
  def step(params, opt_state, pool, idx, flip):
    pixels = pool["images"][idx]
    pixels = jnp.where(flip[:, None, None, None], pixels[:, :, ::-1], pixels)  # captions name no sides
    tokens, mask = pool["ids"][idx], pool["mask"][idx]
    same = jnp.all(tokens[:, None] == tokens[None], axis=-1)

    def loss_fn(p):
      txt = model.apply({"params": p}, tokens, mask, method=CLIP.text_embeds)
      images = image_embeddings(model, p, preprocess.normalize(pixels), poolings)
      return sum(clip_loss(img, txt, p["logit_scale"], same) for img in images) / len(images)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(cfg.seed)
  losses = []
  train_start = time.perf_counter()
  bar = tqdm(range(cfg.total_steps), desc="pretrain CLIP", disable=not show)
  for i in bar:
    idx = rng.choice(cfg.data.pool, cfg.batch_size, replace=False)
    params, opt_state, loss = step(params, opt_state, pool, idx, rng.random(cfg.batch_size) < 0.5)
    losses.append(loss)
    if (i + 1) % cfg.log_every == 0:
      bar.set_postfix(loss=f"{np.mean(jax.device_get(losses[-cfg.log_every :])):.3f}")
    if cfg.get("export_every") and (i + 1) % cfg.export_every == 0 and i + 1 < cfg.total_steps:
      export_clip(config, params, workdir / "clip", np.dtype(cfg.export_dtype))
  losses = np.asarray(jax.device_get(losses))
  export_clip(config, params, workdir / "clip", np.dtype(cfg.export_dtype))
  summary = {
    "final_loss": float(np.mean(losses[-cfg.log_every :])),
    "steps": cfg.total_steps,
    "render_seconds": round(render_seconds, 1),
    "train_seconds": round(time.perf_counter() - train_start, 1),
    "device": jax.devices()[0].device_kind,
  }
  (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
  return summary


def clip_config_dict(config: ClipSegConfig) -> dict:
  """An HF `CLIPConfig` dict for the towers of `config`."""
  d = config.to_dict()
  text, vision = dict(d["text_config"]), dict(d["vision_config"])
  text["model_type"], vision["model_type"] = "clip_text_model", "clip_vision_model"
  return {
    "model_type": "clip",
    "architectures": ["CLIPModel"],
    "text_config": text,
    "vision_config": vision,
    "projection_dim": config.projection_dim,
    "logit_scale_init_value": config.logit_scale_init_value,
  }


def export_clip(config: ClipSegConfig, clip_params, out_dir, dtype=np.float32):
  """Write CLIP params as an HF CLIPModel directory (keys without the `clip.` prefix)."""
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  state = {k: v.astype(dtype) for k, v in hf.to_hf(jax.device_get(clip_params)).items()}
  io.write_safetensors(state, out / "model.safetensors")
  default_tokenizer().save_pretrained(str(out))  # the CLIP tokenizes with nothing else
  (out / "config.json").write_text(json.dumps(clip_config_dict(config), indent=2, sort_keys=True) + "\n")
  return out
