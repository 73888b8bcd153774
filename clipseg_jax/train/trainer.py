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

from clipseg_jax.models.clipseg import ClipSegModel
from clipseg_jax.tokenizer import load_tokenizer
from clipseg_jax.train import checkpoints, freeze, recipes, sharding
from clipseg_jax.train import step as steps
from clipseg_jax.train.data import Data
from clipseg_jax.train.evaluator import Evaluator
from clipseg_jax.train.guard import check_guard, initial_guard
from clipseg_jax.train.logs import Writer
from clipseg_jax.train.recipe_model import (
  check_image_size,
  initial_params,
  model_config,
  recipe_manifest,
  unreached,
)
from clipseg_jax.train.workdir import WorkdirLock, write_model
from clipseg_jax.weights.backbone import check_fingerprint, resolve_clip
from clipseg_jax.weights.io import fingerprint
from clipseg_jax.weights.workdir import BASE, FINETUNE_REMEDY, MODEL_DIR, read_base

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
  old, new = _flat(json.loads(saved.read_text())), _flat(json.loads(recipes.to_json(cfg)))
  old = {**ADDED_DEFAULTS, **old}  # runs saved before a key existed ran with its default
  diff = sorted(k for k in set(old) | set(new) if k not in RESUMABLE and old.get(k) != new.get(k))
  if not old.get("data.heldout_classes") and not new.get("data.heldout_classes"):  # no class held out: no rule
    diff = [k for k in diff if k != "data.heldout_rule"]
  if diff:
    details = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:8])
    raise ValueError(f"{workdir} holds a run of another config ({details}); use a new --workdir")


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
  if (workdir / MODEL_DIR / BASE).exists():
    was = read_base(workdir)
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
    write_model(workdir, recipes.to_json(cfg), config, base, manifest, tokenizer)

  max_skips = int(cfg.optim.get("skip_nonfinite_steps", 0) or 0)
  step_fn = data.jit_step(module, tx, state_sh, frozen_sh, batch_sh, rep, max_skips)
  guard, skipped, last_saved = jax.device_put(initial_guard(), rep), 0, start or None
  # Every process evaluates its share of the held-out images (the metrics are summed across them).
  evaluator = Evaluator(cfg, config, host_frozen, tokenizer, workdir if lead else None) if cfg.eval_every else None
  writer = Writer(workdir) if lead else None
  if writer:
    writer.hparams(json.loads(recipes.to_json(cfg)))
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
