"""What trains: ordered (regex, multiplier | "frozen") rules over '/'-joined parameter paths.

As big_vision's schedule rules: the first rule whose regex fully matches a path decides; a multiplier
scales that leaf's update (its learning rate), "frozen" keeps it fixed. Freezing is expressed once, in
`labels`: the trainer, the step and the checkpoints split the params by it. Frozen leaves never enter
the train state (no optimiser state, no gradient); trainable ones get AdamW, then `optax.scale` per
multiplier through `optax.multi_transform`.
"""

from __future__ import annotations

import logging

import jax
import optax

# The rules themselves (parsing, labels, split/merge) are read without training code when a workdir loads.
from clipseg_jax.weights.freeze_rules import (
  CLIP,
  DEFAULT_RULES,
  FROZEN,
  FreezeRuleError,
  labels,
  merge,
  parse_rules,
  path_str,
  paths,
  rules_of,
  split,
  summary,
  trains_clip,
)

log = logging.getLogger("clipseg_jax.train")
__all__ = [
  "CLIP",
  "DEFAULT_RULES",
  "FROZEN",
  "FreezeRuleError",
  "labels",
  "log_summary",
  "merge",
  "multiplier_transform",
  "opt_state_shardings",
  "parse_rules",
  "path_str",
  "paths",
  "rules_of",
  "split",
  "summary",
  "trains_clip",
]


def log_summary(params, rules=DEFAULT_RULES):
  for text, target, n, size in summary(params, rules):
    what = "frozen" if target == FROZEN else f"lr x {target:g}"
    log.info("freeze rule %r (%s): %d tensors, %d parameters", text, what, n, size)


def multiplier_transform(trainable_labels: dict) -> optax.GradientTransformation | None:
  """`optax.scale` per multiplier over the trainable leaves, or None when every multiplier is 1 (the
  default: the optimiser state is then AdamW's alone, as before the rules existed)."""
  mults = sorted({float(x) for x in jax.tree.leaves(trainable_labels)})
  if mults in ([], [1.0]):
    return None
  names = {m: f"x{m:g}" for m in mults}
  return optax.multi_transform(
    {name: optax.scale(m) for m, name in names.items()}, jax.tree.map(lambda m: names[float(m)], trainable_labels)
  )


def opt_state_shardings(tx, abstract_opt_state, param_shardings, other):
  """Shardings for an optimiser state: each per-parameter leaf (Adam's mu, nu) as its parameter;
  anything else (step counts) `other`."""
  return optax.tree_map_params(
    tx, lambda _, s: s, abstract_opt_state, param_shardings, transform_non_params=lambda _: other
  )
