"""Freeze rules, read: ordered (regex, multiplier | "frozen") rules over '/'-joined parameter paths, and the
split of a params tree by them. The trainer (`clipseg_jax.train.freeze`: the optimiser's side) decides
what trains with these; reading a workdir splits its params by them to know what its checkpoints hold.

As big_vision's schedule rules: the first rule whose regex fully matches a path decides; a multiplier
scales that leaf's update (its learning rate), "frozen" keeps it fixed."""

from __future__ import annotations

import re
from collections.abc import Sequence

import jax
import numpy as np

FROZEN = "frozen"
# The paper's recipe: the decoder trains at the schedule's learning rate, CLIP is frozen.
DEFAULT_RULES = (("decoder/.*", 1.0), ("clip/.*", FROZEN))
CLIP = "clip"  # the top-level key of CLIP's parameters


class FreezeRuleError(ValueError):
  """A malformed rule, a rule that matches no parameter, or a parameter no rule matches."""


def parse_rules(rules) -> list[tuple[re.Pattern, float | str, str]]:
  """[(compiled regex, multiplier or FROZEN, the regex's text)]; a malformed rule is an error naming it."""
  out = []
  for rule in rules:
    if isinstance(rule, str) or len(rule) != 2:
      raise FreezeRuleError(f"optim.freeze_rules: {rule!r} is not a (regex, multiplier or 'frozen') pair")
    pattern, target = rule
    try:
      compiled = re.compile(str(pattern))
    except re.error as e:
      raise FreezeRuleError(f"optim.freeze_rules: {pattern!r} is not a valid regex ({e})") from None
    if target != FROZEN:
      if isinstance(target, bool) or not isinstance(target, (int, float)) or not target > 0:
        raise FreezeRuleError(
          f"optim.freeze_rules: {pattern!r} -> {target!r}: expected a positive multiplier or 'frozen'"
        )
      target = float(target)
    out.append((compiled, target, str(pattern)))
  return out


def path_str(path) -> str:
  return "/".join(str(getattr(k, "key", k)) for k in path)


def paths(tree) -> list[str]:
  return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def labels(params, rules=DEFAULT_RULES):
  """A tree like `params` holding each leaf's multiplier (float) or FROZEN, by the first matching rule.
  A rule that matches no parameter, or a parameter that no rule matches, is an error naming it."""
  parsed = parse_rules(rules)
  used = [0] * len(parsed)

  def label(path, _):
    name = path_str(path)
    for i, (regex, target, _) in enumerate(parsed):
      if regex.fullmatch(name):
        used[i] += 1
        return target
    raise FreezeRuleError(
      f"optim.freeze_rules: no rule matches the parameter {name!r}; end the rules with e.g. ('.*', 'frozen')"
    )

  out = jax.tree_util.tree_map_with_path(label, params)
  unused = [text for (_, _, text), n in zip(parsed, used) if not n]
  if unused:
    raise FreezeRuleError(
      f"optim.freeze_rules: the rule {unused[0]!r} matches no parameter (paths look like {paths(params)[0]!r})"
    )
  return out


def summary(params, rules=DEFAULT_RULES) -> list[tuple[str, float | str, int, int]]:
  """(regex, target, tensors, parameters) per rule: what each rule holds."""
  parsed = parse_rules(rules)
  counts = [[0, 0] for _ in parsed]
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    name = path_str(path)
    i = next(i for i, (regex, _, _) in enumerate(parsed) if regex.fullmatch(name))
    counts[i][0] += 1
    counts[i][1] += int(np.prod(np.shape(leaf)))
  return [(text, target, n, size) for (_, target, text), (n, size) in zip(parsed, counts)]


def _partition(tree, keep):
  """The nested-dict subtree of leaves where `keep(path)` holds (empty dicts pruned)."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      sub = _partition(v, lambda p, k=k: keep((k, *p)))
      if sub:
        out[k] = sub
    elif keep((k,)):
      out[k] = v
  return out


def split(params: dict, label_tree: dict) -> tuple[dict, dict]:
  """(trainable, frozen) nested dicts by the labels. With the default rules: ({'decoder'}, {'clip'})."""

  def get(path):
    node = label_tree
    for k in path:
      node = node[k]
    return node

  return _partition(params, lambda p: get(p) != FROZEN), _partition(params, lambda p: get(p) == FROZEN)


def merge(a: dict, b: dict) -> dict:
  """Two disjoint nested dicts as one (the inverse of `split`)."""
  out = dict(a)
  for k, v in b.items():
    out[k] = merge(out[k], v) if k in out and isinstance(v, dict) and isinstance(out[k], dict) else v
  return out


def trains_clip(trainable: dict) -> bool:
  """Whether any CLIP leaf is in the trainable tree (CLIP's forward must then run under the gradient)."""
  return CLIP in trainable


def rules_of(optim) -> Sequence:
  """The rules of a config's `optim` section (ml_collections or a plain dict read back from JSON)."""
  rules = optim.get("freeze_rules") if hasattr(optim, "get") else None
  return DEFAULT_RULES if rules is None else tuple(tuple(r) for r in rules)
