"""The training loop: mesh, frozen CLIP, decoder state, data, checkpoints, logging, evaluation."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from clipseg_jax.api import ClipSeg
from clipseg_jax.models.clipseg import ClipSegModel
from clipseg_jax.tokenizer import load_tokenizer
from clipseg_jax.train import checkpoints, configs, freeze, sharding
from clipseg_jax.train import step as steps
from clipseg_jax.train.logs import Writer
from clipseg_jax.train.recipe_model import (
  check_image_size,
  initial_params,
  model_config,
  recipe_manifest,
  trains_clip,
  unreached,
)
from clipseg_jax.train.workdir import WorkdirLock, write_model
from clipseg_jax.weights.backbone import check_fingerprint, resolve_clip
from clipseg_jax.weights.io import fingerprint
from clipseg_jax.weights.workdir import FINETUNE_REMEDY

log = logging.getLogger("clipseg_jax.train")
# Settings that may change when a run is resumed; anything else must match the saved config.
RESUMABLE = {
  "total_steps",
  "checkpoint_every",
  "keep_checkpoints",
  "log_every",
  "eval_every",
  "eval_images",
  "sample_every",
  "data.workers",
  "data.pool_slots",
  "data.data_dir",
  "optim.skip_nonfinite_steps",
}

# Keys added to the configs later, with the value that runs saved before them had (JSON form).
ADDED_DEFAULTS = {
  "optim.freeze_rules": [list(rule) for rule in freeze.DEFAULT_RULES],
  "model.transposed_convolution_kernels": [],
  "model.decoder_dropout": 0.0,
  "model.reduce2_dim": None,
  "data.heldout_rule": "synonyms",
  "data.only_visual": False,
}


class TrainingDiverged(ValueError):
  """A step's loss, gradient norm or update was not finite (the CLI: an error, exit status 2)."""


def guarded(fn, max_skips: int = 0):
  """`fn(state, ...) -> (state, metrics)` as `(state, guard, ...) -> (state, guard, metrics)`: the guard,
  a few device scalars carried from step to step, records the first step whose loss, gradient norm or
  new state is not finite (`bad_step`, -1: none) with its loss and gradient norm. Reading it is one
  small transfer, done at log steps and before every save, not a sync per step. With `max_skips`, up
  to that many such steps keep the old params and optimiser state instead (`skipped` counts them)."""

  def step(state, guard, *args):
    new, metrics = fn(state, *args)
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
    for x in jax.tree.leaves((new.params, new.opt_state)):
      if jnp.issubdtype(x.dtype, jnp.inexact):
        finite &= jnp.all(jnp.isfinite(x))
    applied = ~finite
    if max_skips:
      skip = applied & (guard["skipped"] < max_skips)
      keep = lambda old, upd: jax.tree.map(lambda a, b: jnp.where(skip, a, b), old, upd)
      new = new.replace(params=keep(state.params, new.params), opt_state=keep(state.opt_state, new.opt_state))
      guard = {**guard, "skipped": guard["skipped"] + skip.astype(jnp.int32)}
      applied &= ~skip
    first = applied & (guard["bad_step"] < 0)
    guard = {
      **guard,
      "bad_step": jnp.where(first, new.step, guard["bad_step"]),
      "loss": jnp.where(first, metrics["loss"].astype(jnp.float32), guard["loss"]),
      "grad_norm": jnp.where(first, metrics["grad_norm"].astype(jnp.float32), guard["grad_norm"]),
    }
    return new, guard, metrics

  return step


def initial_guard() -> dict:
  return {
    "bad_step": jnp.int32(-1),
    "skipped": jnp.int32(0),
    "loss": jnp.float32(0),
    "grad_norm": jnp.float32(0),
  }


def check_guard(guard, max_skips: int, reported: int = 0, last_saved: int | None = None) -> int:
  """Raises TrainingDiverged if a non-finite step went into the state; warns of newly skipped steps.
  Returns the count of skipped steps."""
  g = {k: v.item() for k, v in jax.device_get(guard).items()}
  if g["bad_step"] >= 0:
    kept = f"the last checkpoint saved is step {last_saved}" if last_saved else "no checkpoint was saved"
    skipped = f" after skipping {g['skipped']} (optim.skip_nonfinite_steps={max_skips})" if max_skips else ""
    values = f"loss {g['loss']:.4g}, gradient norm {g['grad_norm']:.4g}"
    finite = np.isfinite([g["loss"], g["grad_norm"]]).all()
    what = "a non-finite update" if finite else "a non-finite loss or gradient norm"
    raise TrainingDiverged(
      f"training diverged at step {g['bad_step']}{skipped}: {what} ({values}); stopped before saving it "
      f"({kept}); lower optim.learning_rate, or set optim.grad_clip_norm or optim.skip_nonfinite_steps"
    )
  if g["skipped"] > reported:
    log.warning(
      "skipped %d step(s) with a non-finite loss, gradient norm or update so far (at most %d: "
      "optim.skip_nonfinite_steps)",
      g["skipped"],
      max_skips,
    )
  return g["skipped"]


def _flat(d, prefix=""):
  out = {}
  for k, v in d.items():
    out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
  return out


def check_workdir(cfg, workdir: Path):
  """Refuse a workdir holding a run of another config (before any compute)."""
  saved = workdir / "config.json"
  if not saved.exists():
    return
  old, new = _flat(json.loads(saved.read_text())), _flat(json.loads(configs.to_json(cfg)))
  old = {**ADDED_DEFAULTS, **old}  # runs saved before a key existed ran with its default
  diff = sorted(k for k in set(old) | set(new) if k not in RESUMABLE and old.get(k) != new.get(k))
  if not old.get("data.heldout_classes") and not new.get("data.heldout_classes"):  # no class held out: no rule
    diff = [k for k in diff if k != "data.heldout_rule"]
  if diff:
    details = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:8])
    raise ValueError(f"{workdir} holds a run of another config ({details}); use a new --workdir")


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


class Preempted:
  """SIGTERM sets a flag; the loop saves a checkpoint and exits cleanly at the next step. With several
  processes the flag is agreed on every step (a SIGTERM may reach only some of them): all save the
  same step and stop together, instead of the others waiting forever in the next collective."""

  def __init__(self):
    self.flag = False
    self._old = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, *_):
    self.flag = True

  def agreed(self) -> bool:
    if jax.process_count() == 1:
      return self.flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.int32(self.flag))))

  def restore(self):
    signal.signal(signal.SIGTERM, self._old)


def train(cfg, workdir, *, show_progress: bool = True) -> dict:
  """Train (or resume) the run in `workdir`; returns the last metrics and the step reached (below
  `total_steps` when a SIGTERM stopped the run)."""
  workdir = Path(os.path.expanduser(str(workdir)))
  check_workdir(cfg, workdir)
  mesh = sharding.make_mesh(cfg.mesh.shape, cfg.mesh.axes)
  sharding.check_batch(cfg.batch_size, mesh)
  lead = jax.process_index() == 0
  workdir.mkdir(parents=True, exist_ok=True)
  with WorkdirLock(workdir, enabled=lead):  # a second trainer on this workdir fails here
    return _train(cfg, workdir, mesh, lead, show_progress)


def _train(cfg, workdir: Path, mesh, lead: bool, show_progress: bool) -> dict:

  config = model_config(cfg.model)
  compute = None if cfg.optim.compute_dtype == "float32" else jnp.dtype(cfg.optim.compute_dtype)
  module = ClipSegModel(config, compute, decoder_dropout=float(cfg.model.get("decoder_dropout", 0.0)))
  check_image_size(config, cfg.data.pcplus.image_size, cfg.model.clip)
  params = initial_params(config, cfg.model.clip, cfg.seed)
  rules = freeze.rules_of(cfg.optim)
  labels = freeze.labels(params, rules)  # what trains: the one place it is decided
  trainable, frozen = freeze.split(params, labels)
  if lead:
    freeze.log_summary(params, rules)
  # The fingerprint of the CLIP the run starts from (fine-tuned leaves included, before training).
  base = {"clip": cfg.model.clip, "clip_sha256": fingerprint(params["clip"])}
  if lead and (idle := unreached(trainable, config, cfg.data.pcplus.visual_prompts)):
    log.warning("optim.freeze_rules train %d CLIP tensors the loss never reads (e.g. %s)", len(idle), idle[0])
  if freeze.trains_clip(trainable):
    base["clip_trained"] = freeze.paths({"clip": trainable["clip"]})  # the checkpoints hold these
  if (recorded := workdir / "model" / "base.json").exists():
    was = json.loads(recorded.read_text())
    check_fingerprint(
      workdir, was["clip"], was.get("clip_sha256"), None, remedy=FINETUNE_REMEDY, digest=base["clip_sha256"]
    )
  # What the model is (input size, prompt mode and kinds, CLIP): for the evaluator, loading and exports.
  manifest = recipe_manifest(cfg, config, base)
  del params
  tx = steps.make_optimizer(cfg.optim, cfg.total_steps, freeze.split(labels, labels)[0])
  state = steps.init_state(trainable, tx)

  rep = sharding.replicated(mesh)
  # Trainable CLIP leaves and their optimiser state shard as the frozen CLIP does; the decoder is replicated.
  params_sh = sharding.param_shardings_by_part(trainable, mesh, cfg.mesh.clip_sharding)
  opt_sh = freeze.opt_state_shardings(tx, jax.eval_shape(lambda: state.opt_state), params_sh, rep)
  state_sh = steps.TrainState(step=rep, params=params_sh, opt_state=opt_sh)
  frozen_sh = sharding.param_shardings_by_part(frozen, mesh, cfg.mesh.clip_sharding)
  # A host copy for the feature cache and the evaluator: with CLIP split over the processes of a
  # multi-host run (fsdp), no single process could read the sharded one back.
  host_frozen = jax.device_get(frozen)
  frozen = jax.device_put(frozen, frozen_sh)
  batch_sh = sharding.batch_sharding(mesh)

  clip_dir = resolve_clip(cfg.model.clip)  # its tokenizer files (OpenAI CLIP's when it has none)
  tokenizer = load_tokenizer(clip_dir)
  data = Data(cfg, module, host_frozen, mesh, clip_dir)
  ckpt = checkpoints.Checkpointer(workdir / "checkpoints", cfg.keep_checkpoints)
  start = ckpt.latest_step() or 0
  if start:
    try:
      # The newest step that restores and matches its digest; newer damaged ones: a warning each.
      state, data_state, start = ckpt.restore(jax.eval_shape(lambda: state), state_sh)
    except BaseException:
      ckpt.close()
      raise
    if start < ckpt.latest_step():
      # Steps after `start` will be saved again: set the damaged ones aside (kept, never rotated
      # out in place of a good one).
      if lead:
        moved = ckpt.quarantine_newer(start)
        log.warning("moved the checkpoints that do not restore aside: %s", ", ".join(map(str, moved)))
      if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("clipseg_jax.quarantine")
      ckpt.reload()
    data.restore(data_state)
    log.info("resumed %s at step %d", workdir, start)
  state = jax.device_put(state, state_sh)
  if lead:
    write_model(workdir, configs.to_json(cfg), config, base, manifest, tokenizer)

  max_skips = int(cfg.optim.get("skip_nonfinite_steps", 0) or 0)
  step_fn = data.jit_step(module, tx, state_sh, frozen_sh, batch_sh, rep, max_skips)
  guard, skipped, last_saved = jax.device_put(initial_guard(), rep), 0, start or None
  # Every process evaluates its share of the held-out images (the metrics are summed across them).
  evaluator = Evaluator(cfg, config, host_frozen, tokenizer, workdir if lead else None) if cfg.eval_every else None
  writer = Writer(workdir) if lead else None
  if writer:
    writer.hparams(json.loads(configs.to_json(cfg)))
  schedule = steps.learning_rate(cfg.optim, cfg.total_steps)  # make_optimizer's, for the logs
  preempted = Preempted()
  metrics, t0, seen, done = {}, time.perf_counter(), 0, start
  bar = tqdm(
    range(start, cfg.total_steps),
    initial=start,
    total=cfg.total_steps,
    desc="train",
    disable=not (lead and show_progress),
  )
  status = "FAILURE"  # of the TensorBoard session, unless the loop ends
  try:
    for step in bar:
      state, guard, metrics = step_fn(state, guard, frozen, *data.batch(step, batch_sh))
      seen += cfg.batch_size
      done = step + 1
      stop = preempted.agreed()
      logs = done % cfg.log_every == 0 or done == cfg.total_steps
      evals = evaluator and (done % cfg.eval_every == 0 or done == cfg.total_steps)
      saves = done % cfg.checkpoint_every == 0 or done == cfg.total_steps or stop
      if logs or evals or saves:  # never log, evaluate or save a diverged state
        skipped = check_guard(guard, max_skips, skipped, last_saved)
      if logs:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        metrics["images_per_s"] = seen / (time.perf_counter() - t0)
        metrics["learning_rate"] = float(schedule(step))  # the rate this step's update used
        t0, seen = time.perf_counter(), 0
        bar.set_postfix(loss=f"{metrics['loss']:.4f}", img_s=f"{metrics['images_per_s']:.1f}")
        if writer:
          writer.scalars(done, metrics)
      if evals:
        result, picture = evaluator(state.params, done)
        if writer:
          writer.scalars(done, result)
          writer.images(done, {"eval/predictions": picture})
        metrics.update(result)
      if saves:
        ckpt.save(done, state, data.state(done), force=True)
        last_saved = done
      if stop:
        log.warning("SIGTERM: saved step %d, exiting", done)
        break
    status = "SUCCESS" if done == cfg.total_steps else None  # stopped early: the session goes on at resume
  finally:
    if writer:
      if status:
        writer.session_end(status)
      writer.close()
    ckpt.wait()
    ckpt.close()
    preempted.restore()
  if skipped:
    metrics["skipped_steps"] = skipped
  return {"step": done, **metrics}


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


class Evaluator:
  """Periodic IoU on the held-out split -> (scalars, a picture of predictions); the picture is also saved
  in workdir/samples every `sample_every` steps (when given a workdir: process 0)."""

  def __init__(self, cfg, config, frozen, tokenizer, workdir: Path | None):
    self.cfg, self.config, self.frozen, self.tokenizer, self.workdir = cfg, config, frozen, tokenizer, workdir
    self.model = None  # built at the first evaluation, from the trained params (then only updated)

  def __call__(self, trainable, step: int):
    from clipseg_jax.evaluation import report
    from clipseg_jax.evaluation.protocols import EvalOptions, predictor_for, referring
    from clipseg_jax.input_pipeline.sources import data_dir_or_default

    # The whole model (trained leaves over the frozen ones), its reduce kernels scaled (fold_activation_scale).
    params = freeze.merge(self.frozen, jax.device_get(trainable))
    params = steps.fold_activation_scale(params, self.cfg.model.activation_scale)
    if self.model is None:
      self.model = ClipSeg(self.config, params, self.tokenizer, manifest=recipe_manifest(self.cfg, self.config))
    else:
      self.model.params = params
    opts = EvalOptions(
      data_dir=data_dir_or_default(self.cfg.data.data_dir),
      dataset=self.cfg.data.name,
      split=self.cfg.data.eval_split,
      limit=self.cfg.eval_images,
      progress=False,
    )
    predictor = predictor_for(self.model, withhold_prompt=self.cfg.model.withhold_prompt)
    numbers, examples = referring(predictor, opts, self.cfg.data.name, self.cfg.data.eval_split)
    picture = report.picture(examples)
    picture_due = self.cfg.sample_every and step % self.cfg.sample_every == 0 or step == self.cfg.total_steps
    if self.workdir and picture_due:
      (self.workdir / "samples").mkdir(exist_ok=True)
      picture.save(self.workdir / "samples" / f"step_{step:07d}.png")
    scalars = {
      "eval/iou_fg@0.5": numbers["iou_fg"]["fixed"]["0.5"],
      "eval/iou_fg_best": numbers["iou_fg"]["value"],
      "eval/miou_best": numbers["miou"]["value"],
      "eval/ap": numbers["ap"],
    }
    return scalars, picture
