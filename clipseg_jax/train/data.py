"""A run's batches: cached CLIP features (decoder-only steps) or streamed raw batches (PhraseCut+ or
episodes), sharded over the mesh, with the jitted step that takes them and the state to resume them."""

from __future__ import annotations

import jax

from clipseg_jax.tokenizer import load_tokenizer
from clipseg_jax.train import sharding
from clipseg_jax.train import step as steps
from clipseg_jax.train.guard import guarded, initial_guard
from clipseg_jax.train.recipe_model import trains_clip


def use_cache(cfg) -> bool:
  mode = cfg.data.cache_features
  if mode in ("auto", True) and trains_clip(cfg):  # CLIP's features change every step: none to cache
    if mode is True:
      raise ValueError(
        "data.cache_features=True cannot fine-tune CLIP (optim.freeze_rules leave CLIP parameters trainable): "
        "its features change every step; set data.cache_features to 'auto' or False"
      )
    return False
  if mode == "auto":
    return not cfg.data.pcplus.augment
  if isinstance(mode, bool):
    return mode
  raise ValueError(f"data.cache_features must be 'auto', True or False, got {mode!r}")


class Data:
  """The two data paths: cached CLIP features (decoder-only steps) or streamed raw batches."""

  def __init__(self, cfg, module, frozen, mesh, tokenizer_dir):
    from clipseg_jax.input_pipeline import open_source
    from clipseg_jax.input_pipeline.heldout import make_filter, repeated_phrases
    from clipseg_jax.input_pipeline.pcplus import PairIndex, PCPlusOptions
    from clipseg_jax.input_pipeline.sources import data_dir_or_default

    self.cfg, self.mesh = cfg, mesh
    self.opts = PCPlusOptions.from_config(cfg.data.pcplus)
    self.local = cfg.batch_size // jax.process_count()
    episodes = cfg.data.get("episodes")
    if episodes is not None and episodes.get("kind"):  # episodic training (COCO-20i): input_pipeline/episodes.py
      self._init_episodes(cfg, tokenizer_dir, module.config.text_config.max_position_embeddings)
      return
    self.cached = use_cache(cfg)
    source = open_source(cfg.data.name, cfg.data.train_split, data_dir=data_dir_or_default(cfg.data.data_dir))
    classes, rule = cfg.data.heldout_classes, cfg.data.get("heldout_rule", "synonyms")
    keep = make_filter(classes, rule) if classes else None
    if cfg.data.get("only_visual"):
      if not self.opts.visual_prompts or self.opts.mix_max:
        raise ValueError(
          "data.only_visual conditions on the visual prompt alone: it needs data.pcplus.visual_prompts=True "
          f"and data.pcplus.mix_max=0.0 (got {self.opts.visual_prompts}, {self.opts.mix_max})"
        )
      keep = repeated_phrases(source, keep)
    if self.cached:
      from clipseg_jax.train.features import FeatureCache

      cache = FeatureCache(
        module,
        frozen,
        load_tokenizer(tokenizer_dir),
        source,
        PairIndex(source, keep),
        self.opts,
        show=jax.process_index() == 0,
      )
      self.cache = cache
      self.tables = jax.device_put(cache.tables(), sharding.replicated(mesh))
    else:
      from clipseg_jax.input_pipeline.loader import make_loader

      loader = make_loader(
        source,
        self.opts,
        batch_size=self.local,
        seed=cfg.seed,
        worker_count=cfg.data.workers,
        pool_slots=cfg.data.get("pool_slots"),
        shard_index=jax.process_index(),
        shard_count=jax.process_count(),
        keep=keep,
        max_length=module.config.text_config.max_position_embeddings,
        tokenizer_dir=str(tokenizer_dir),
      )
      self.iterator = iter(loader)

  def _init_episodes(self, cfg, tokenizer_dir, max_length: int):
    """Streamed episodes (`data.episodes.kind`), made on the host: no feature cache, no device path."""
    from clipseg_jax.input_pipeline.episodes import make_transform
    from clipseg_jax.input_pipeline.loader import make_episode_loader

    if str(cfg.data.cache_features).lower() == "true":
      raise ValueError("data.episodes draws a new episode per sample: set data.cache_features to 'auto'")
    if self.opts.q_neg:
      raise ValueError(
        "data.pcplus.q_neg does not apply to episodes: their negatives are data.episodes.negative_prob "
        f"(got q_neg={self.opts.q_neg})"
      )
    self.cached = False
    loader = make_episode_loader(
      make_transform(cfg.data, self.opts),
      batch_size=self.local,
      seed=cfg.seed,
      worker_count=cfg.data.workers,
      pool_slots=cfg.data.get("pool_slots"),
      shard_index=jax.process_index(),
      shard_count=jax.process_count(),
      max_length=max_length,
      tokenizer_dir=str(tokenizer_dir),
    )
    self.iterator = iter(loader)

  def jit_step(self, module, tx, state_sh, frozen_sh, batch_sh, rep, max_skips: int = 0):
    """The jitted `(state, guard, frozen, ...) -> (state, guard, metrics)` (see `guarded`)."""
    guard_sh = jax.tree.map(lambda _: rep, initial_guard())
    if self.cached:
      fn = steps.make_cached_step(
        module, tx, self.cfg.model.withhold_prompt, self.cfg.model.activation_scale, seed=self.cfg.seed
      )
      rest = (jax.tree.map(lambda _: rep, self.tables), batch_sh)
    else:
      fn = steps.make_stream_step(
        module,
        tx,
        self.opts.visual_prompts,
        self.cfg.model.withhold_prompt,
        self.cfg.model.activation_scale,
        seed=self.cfg.seed,
      )
      if self.opts.device_augment:  # the loader shipped uint8 supports: prompt engineering runs here
        from clipseg_jax.input_pipeline import device

        stream, mode, size = fn, self.opts.prompt_mode, self.opts.image_size
        fn = lambda state, frozen, batch: stream(state, frozen, device.finish(batch, mode, size))
      rest = (batch_sh,)
    return jax.jit(
      guarded(fn, max_skips),
      in_shardings=(state_sh, guard_sh, frozen_sh, *rest),
      out_shardings=(state_sh, guard_sh, rep),
      donate_argnums=(0, 1),
    )

  def batch(self, step: int, batch_sh):
    if self.cached:
      local = self.cache.sample(self.cfg.seed, step, self.cfg.batch_size, jax.process_index(), jax.process_count())
      return self.tables, sharding.global_batch(local, batch_sh)
    return (sharding.global_batch(next(self.iterator), batch_sh),)

  def state(self, step: int) -> dict:
    if self.cached:
      return {"kind": "cached", "step": step}
    return {"kind": "stream", "iterator": self.iterator.get_state()}

  def restore(self, state: dict):
    if not self.cached and state.get("kind") == "stream":
      self.iterator.set_state(state["iterator"])
