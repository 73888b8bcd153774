"""The divergence guard: device scalars carried from step to step that record the first non-finite step
(or skip up to N of them), read at log and save steps only (no sync per step)."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger("clipseg_jax.train")


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
