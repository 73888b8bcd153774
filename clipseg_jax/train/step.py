"""The train step: a jitted pure function (state, batch) -> (state, metrics).

Freezing is expressed once, by the rules of `clipseg_jax.train.freeze` (`split`): frozen parameters
never enter the train state, so the optimiser holds no state for them and updates nothing of theirs,
and the loss is differentiated with respect to the trainable parameters only. With every CLIP leaf
frozen (the paper's recipe, the default rules) CLIP's forward pass runs outside `value_and_grad`: no
backward pass through CLIP exists in the compiled step. With some CLIP leaves trainable, CLIP's forward
runs inside it and the backward pass reaches only as deep as the deepest trainable leaf needs.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from clipseg_jax import preprocess, prompts
from clipseg_jax.models.clipseg import ClipSegModel
from clipseg_jax.train import freeze

# Loading a workdir applies it too (without training code); the trainer's evaluator uses it from here.
from clipseg_jax.weights.workdir import fold_activation_scale as fold_activation_scale


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any  # the trainable part only
  opt_state: Any


def make_schedule(peak: float, end: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 (if any), then cosine decay to `end` at `total_steps` (the paper: 1e-3 ->
  1e-4). Both trainers (the decoder's and the CLIP pretraining) use it."""
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0 if warmup_steps else peak,
    peak_value=peak,
    warmup_steps=warmup_steps,
    decay_steps=max(total_steps, warmup_steps + 1),
    end_value=end,
  )


def learning_rate(optim, total_steps: int) -> optax.Schedule:
  """The base learning rate of a decoder run (before the freeze rules' multipliers), step -> rate."""
  return make_schedule(optim.learning_rate, optim.end_learning_rate, optim.warmup_steps, total_steps)


def make_optimizer(optim, total_steps: int, trainable_labels=None) -> optax.GradientTransformation:
  """AdamW on the schedule, optional gradient clipping, then the freeze rules' learning-rate
  multipliers (`trainable_labels`: the labels of the trainable leaves; none or all 1: plain AdamW)."""
  tx = optax.adamw(learning_rate(optim, total_steps), b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay)
  if optim.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(optim.grad_clip_norm), tx)
  scale = None if trainable_labels is None else freeze.multiplier_transform(trainable_labels)
  return tx if scale is None else optax.chain(tx, scale)


def init_state(trainable: dict, tx) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=trainable, opt_state=tx.init(trainable))


def bce(logits, targets):
  return optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), targets).mean()


def _update(state: TrainState, tx, loss_fn):
  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def dropout_rng(module: ClipSegModel, seed: int, step):
  """The decoder dropout's key for one step: a function of (seed, step) alone, so a resumed run draws the
  same masks as an uninterrupted one; None when the module has no dropout (deterministic decoding)."""
  if not module.decoder_dropout:
    return None
  return jax.random.fold_in(jax.random.key(seed), step)


def decode(module: ClipSegModel, params, activations, cond, rng=None):
  """Decoder logits in training mode: dropout on when `rng` is given (`dropout_rng`), off otherwise."""
  train = {"deterministic": False, "rngs": {"dropout": rng}} if rng is not None else {}
  return module.apply({"params": params}, activations, cond, method=ClipSegModel.decode_activations, **train)


def decoder_loss(module: ClipSegModel, frozen, activations, cond, mask, activation_scale: float = 1.0, rng=None):
  """The loss as a function of the trainable parameters (CLIP outputs are constants here); `rng`: the
  step's dropout key (None: no dropout)."""
  activations = [a * activation_scale for a in activations]

  def loss_fn(trainable):
    return bce(decode(module, freeze.merge(frozen, trainable), activations, cond, rng), mask)

  return loss_fn


def finetune_loss(
  module: ClipSegModel, frozen, batch, visual_prompts: bool, withhold_prompt: bool, activation_scale, rng=None
):
  """The loss as a function of the trainable parameters, CLIP's trainable leaves among them: CLIP's
  forward runs inside the differentiated function."""

  def loss_fn(trainable):
    params = freeze.merge(frozen, trainable)
    clip = lambda method, *args: module.apply({"params": params}, *args, method=method)
    acts = clip(ClipSegModel.activations, preprocess.normalize(batch["pixels"]))
    cond = clip(ClipSegModel.text_embeddings, batch["input_ids"], batch["attention_mask"])
    if visual_prompts:
      cond = prompts.interpolate(cond, clip(ClipSegModel.visual_embeddings, batch["support"]), batch["text_weight"])
    if withhold_prompt:
      cond = jnp.zeros_like(cond)
    acts = [a * activation_scale for a in acts]
    return bce(decode(module, params, acts, cond, rng), batch["mask"])

  return loss_fn


def make_stream_step(
  module: ClipSegModel,
  tx,
  visual_prompts: bool,
  withhold_prompt: bool = False,
  activation_scale: float = 1.0,
  seed: int = 0,
):
  """Step on raw batches (clipseg_jax.input_pipeline.loader): frozen CLIP forward, then the decoder's
  update; or, when the train state holds CLIP leaves (freeze rules), CLIP's forward under the gradient.
  The decoder's dropout (if the module has any) draws from `dropout_rng(module, seed, state.step)`."""

  def step(state: TrainState, frozen, batch):
    rng = dropout_rng(module, seed, state.step)
    if freeze.trains_clip(state.params):
      loss_fn = finetune_loss(module, frozen, batch, visual_prompts, withhold_prompt, activation_scale, rng)
      return _update(state, tx, loss_fn)
    clip = lambda method, *args: jax.lax.stop_gradient(module.apply({"params": frozen}, *args, method=method))
    acts = clip(ClipSegModel.activations, preprocess.normalize(batch["pixels"]))
    cond = clip(ClipSegModel.text_embeddings, batch["input_ids"], batch["attention_mask"])
    if visual_prompts:
      visual = clip(ClipSegModel.visual_embeddings, batch["support"])  # normalised by prompt engineering
      cond = prompts.interpolate(cond, visual, batch["text_weight"])
    if withhold_prompt:
      cond = jnp.zeros_like(cond)
    return _update(state, tx, decoder_loss(module, frozen, acts, cond, batch["mask"], activation_scale, rng))

  return step


def make_cached_step(
  module: ClipSegModel, tx, withhold_prompt: bool = False, activation_scale: float = 1.0, seed: int = 0
):
  """Step on cached CLIP features: the batch holds table indices; only the decoder runs (its dropout, if
  any, as in `make_stream_step`)."""

  def step(state: TrainState, frozen, tables, batch):
    rng = dropout_rng(module, seed, state.step)
    if freeze.trains_clip(state.params):
      raise ValueError("cached CLIP features cannot train CLIP: set data.cache_features=False")
    acts = [a[batch["record"]] for a in tables["activations"]]
    cond = prompts.interpolate(tables["text"][batch["text"]], tables["visual"][batch["visual"]], batch["text_weight"])
    if withhold_prompt:
      cond = jnp.zeros_like(cond)
    return _update(state, tx, decoder_loss(module, frozen, acts, cond, batch["mask"], activation_scale, rng))

  return step


def count_flops(fn, *args, compiled: bool = True) -> float:
  """FLOPs XLA's cost analysis assigns to the compiled `fn(*args)`, or with `compiled=False` to the
  lowered program (what model FLOP utilisation counts: on GPUs the compiled count misses the matmuls
  handed to cuBLAS). NaN where the backend gives no analysis (jax 0.11's CUDA plugin, uncompiled)."""
  lowered = jax.jit(fn).lower(*args)
  cost = lowered.compile().cost_analysis() if compiled else lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get("flops", np.nan))
