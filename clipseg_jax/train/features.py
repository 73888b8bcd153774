"""Feature caching: with un-augmented query images the frozen CLIP's outputs never change, so they
are computed once (activations per image, text embeddings per phrase and template, visual-prompt
embeddings per pair) and each step runs only the decoder on table lookups.

The sampler reproduces the PhraseCut+ choices (negatives, templates, supports, mixing weights) as a
pure function of (seed, step): resuming needs nothing but the step number.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from tqdm import tqdm

from clipseg_jax import preprocess, prompts
from clipseg_jax.models.clipseg import ClipSegModel

CHUNK = 16  # images per CLIP call while building the tables


class FeatureCache:
  def __init__(self, module: ClipSegModel, clip_params: dict, source, index, opts, *, show: bool = True):
    self.opts, self.index = opts, index
    s = opts.image_size
    apply = lambda method: jax.jit(lambda p, *a: module.apply({"params": p}, *a, method=method))
    acts_fn, text_fn, visual_fn = (apply(ClipSegModel.activations), apply(ClipSegModel.text_embeddings),
                                   apply(ClipSegModel.visual_embeddings))
    from clipseg_jax.tokenizer import load_tokenizer
    tok = load_tokenizer()
    records = sorted({r for r, _ in index.pairs})
    self.record_row = {r: i for i, r in enumerate(records)}
    pairs_of = {}
    for p, (r, k) in enumerate(index.pairs):
      pairs_of.setdefault(r, []).append((p, k))
    self.activations = None
    self.masks = np.zeros((len(index), s, s), np.uint8)
    self.visual = np.zeros((len(index) if opts.visual_prompts else 1, module.config.projection_dim), np.float32)
    queries, query_rows, supports, support_ids = [], [], [], []

    def flush(final=False):
      """Run CLIP on the images gathered so far, CHUNK at a time."""
      if queries and (final or len(queries) >= CHUNK):
        out = acts_fn(clip_params, preprocess.normalize(jnp.asarray(np.stack(queries))))
        if self.activations is None:
          self.activations = [np.zeros((len(records),) + a.shape[1:], np.float32) for a in out]
        for table, a in zip(self.activations, out):
          table[query_rows] = np.asarray(a)
        queries.clear()
        query_rows.clear()
      if supports and (final or len(supports) >= CHUNK):
        self.visual[support_ids] = np.asarray(visual_fn(clip_params, preprocess.normalize(
            jnp.asarray(np.stack(supports)))))
        supports.clear()
        support_ids.clear()

    for row, r in enumerate(tqdm(records, desc="caching CLIP features", unit="img", disable=not show)):
      record = source[r]  # decoded once: query activations, masks and visual prompts of all its pairs
      queries.append(np.asarray(Image.fromarray(record["image"]).resize((s, s), Image.BILINEAR)))
      query_rows.append(row)
      for p, k in pairs_of[r]:
        mask = record["masks"][k]
        self.masks[p] = np.asarray(Image.fromarray(mask.astype(np.uint8)).resize((s, s), Image.NEAREST))
        if opts.visual_prompts:
          supports.append(prompts.visual_prompt(record["image"], mask, opts.prompt_mode, s))
          support_ids.append(p)
      flush()
    flush(final=True)
    self.phrases = sorted(index.by_phrase)
    self.phrase_id = {p: i for i, p in enumerate(self.phrases)}
    texts = [t.format(p) for p in self.phrases for t in opts.templates]
    emb = []
    for start in range(0, len(texts), 256):
      batch = tok(texts[start:start + 256], padding="max_length", truncation=True, max_length=77,
                  return_tensors="np")
      emb.append(np.asarray(text_fn(clip_params, jnp.asarray(batch["input_ids"], jnp.int32),
                                    jnp.asarray(batch["attention_mask"], jnp.int32))))
    self.text = np.concatenate(emb)
    self.pair_phrase = np.array([self.phrase_id[p] for p in index.phrases])
    self.pair_record = np.array([self.record_row[r] for r, _ in index.pairs])

  def tables(self) -> dict:
    return {"activations": self.activations, "text": self.text, "visual": self.visual}

  def sample(self, seed: int, step: int, batch_size: int, shard_index: int = 0, shard_count: int = 1):
    """The global batch of `step` (the same on every process), sliced to this process's share."""
    rng = np.random.default_rng([seed, step])
    opts, n_t = self.opts, len(self.opts.templates)
    pairs = rng.integers(0, len(self.index), batch_size)
    out = {k: [] for k in ("record", "mask", "text", "visual", "text_weight")}
    for p in pairs:
      phrase = int(self.pair_phrase[p])
      mask = self.masks[p]
      if rng.random() < opts.q_neg:
        other = int(self.pair_phrase[rng.integers(len(self.index))])
        if other != phrase:
          phrase, mask = other, np.zeros_like(mask)
      template = int(rng.integers(n_t))
      visual, weight = 0, 1.0
      if opts.visual_prompts:
        candidates = [q for q in self.index.by_phrase[self.phrases[phrase]] if q != p]
        if candidates:
          visual, weight = int(candidates[int(rng.integers(len(candidates)))]), float(rng.uniform(0, opts.mix_max))
      out["record"].append(self.pair_record[p])
      out["mask"].append(mask)
      out["text"].append(phrase * n_t + template)
      out["visual"].append(visual)
      out["text_weight"].append(weight)
    local = batch_size // shard_count
    sl = slice(shard_index * local, (shard_index + 1) * local)
    return {"record": np.asarray(out["record"], np.int32)[sl], "mask": np.asarray(out["mask"], np.float32)[sl],
            "text": np.asarray(out["text"], np.int32)[sl], "visual": np.asarray(out["visual"], np.int32)[sl],
            "text_weight": np.asarray(out["text_weight"], np.float32)[sl]}
