"""Feature caching: with un-augmented query images the frozen CLIP's outputs never change, so they
are computed once (activations per image, text embeddings per phrase and template, visual-prompt
embeddings per pair) and each step runs only the decoder on table lookups.

The sampler reproduces the PhraseCut+ choices (negatives, templates, supports, mixing weights) as a
pure function of (seed, step): resuming needs nothing but the step number. Images, masks and supports
are resized as the streaming path does without augmentation (`pcplus.resize_crop`: the original's
`load_sample` with `aug_crop=False`, torch's bilinear with align_corners=True and its nearest), so both
paths train on the same pixels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from clipseg_jax import preprocess
from clipseg_jax.input_pipeline.pcplus import PCPlusSampler, resize_crop, support_prompt
from clipseg_jax.models.clipseg import ClipSegModel
from clipseg_jax.tokenizer import tokenize

CHUNK = 16  # images per CLIP call while building the tables
TEXT_CHUNK = 256  # prompts per text-tower call


class FeatureCache:
  def __init__(self, module: ClipSegModel, clip_params: dict, tokenizer, source, index, opts, *, show: bool = True):
    self.opts, self.index, self.sampler = opts, index, PCPlusSampler(index, opts)
    s = opts.image_size
    apply = lambda method: jax.jit(lambda p, *a: module.apply({"params": p}, *a, method=method))
    acts_fn, text_fn, visual_fn = (
      apply(ClipSegModel.activations),
      apply(ClipSegModel.text_embeddings),
      apply(ClipSegModel.visual_embeddings),
    )
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
        self.visual[support_ids] = np.asarray(
          visual_fn(clip_params, jnp.asarray(np.stack(supports)))  # already normalised
        )
        supports.clear()
        support_ids.clear()

    for row, r in enumerate(tqdm(records, desc="caching CLIP features", unit="img", disable=not show)):
      record = source[r]  # decoded once: query activations, masks and visual prompts of all its pairs
      image = record["image"]
      queries.append(preprocess.resize_aligned(image, s))  # float32 0..255, unrounded
      query_rows.append(row)
      for p, k in pairs_of[r]:
        pixels, mask = resize_crop(image, record["masks"][k], s)
        self.masks[p] = mask
        if opts.visual_prompts:
          # resized first, then prompt engineering on the float pixels: as PCPlusTransform (the original)
          supports.append(support_prompt(pixels, mask, opts.prompt_mode, s))
          support_ids.append(p)
      flush()
    flush(final=True)
    self.phrases = sorted(index.by_phrase)
    self.phrase_id = {p: i for i, p in enumerate(self.phrases)}
    texts = [t.format(p) for p in self.phrases for t in opts.templates]
    emb, limit = [], module.config.text_config.max_position_embeddings
    for start in range(0, len(texts), TEXT_CHUNK):
      ids, mask = tokenize(tokenizer, texts[start : start + TEXT_CHUNK], limit)
      emb.append(np.asarray(text_fn(clip_params, jnp.asarray(ids), jnp.asarray(mask))))
    self.text = np.concatenate(emb)
    self.pair_record = np.array([self.record_row[r] for r, _ in index.pairs])

  def tables(self) -> dict:
    return {"activations": self.activations, "text": self.text, "visual": self.visual}

  def sample(self, seed: int, step: int, batch_size: int, shard_index: int = 0, shard_count: int = 1):
    """The global batch of `step` (the same on every process), sliced to this process's share."""
    rng = np.random.default_rng([seed, step])
    n_t = len(self.opts.templates)
    out = {k: [] for k in ("record", "mask", "text", "visual", "text_weight")}
    for p in rng.integers(0, len(self.index), batch_size):
      c = self.sampler.choose(int(p), rng)
      out["record"].append(self.pair_record[p])
      out["mask"].append(np.zeros_like(self.masks[p]) if c.negative else self.masks[p])
      out["text"].append(self.phrase_id[c.phrase] * n_t + c.template)
      out["visual"].append(0 if c.support is None else c.support)  # row 0 is unused when w = 1
      out["text_weight"].append(c.text_weight)
    local = batch_size // shard_count
    sl = slice(shard_index * local, (shard_index + 1) * local)
    types = {"record": np.int32, "mask": np.float32, "text": np.int32, "visual": np.int32, "text_weight": np.float32}
    return {k: np.asarray(v, types[k])[sl] for k, v in out.items()}
