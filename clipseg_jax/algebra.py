"""Prompt algebra: expressions over prompts (`"head" - "ear"`, `"a cat" | "a dog"`, `("a" | "b") & $ref`).

Grammar (operators bind as Python's set operators do: `-` tighter than `&`, `&` tighter than `|`; each is
left-associative):
  union        := intersection ('|' intersection)*
  intersection := difference ('&' difference)*
  difference   := operand ('-' operand)*
  operand      := "text" | 'text' | $name | '(' union ')'
Text operands are quoted (a backslash escapes a quote or a backslash); `$name` is bound by `operands=` to
anything `ClipSeg.encode_prompts` takes (a string, a `(support_image, support_mask)` pair, `prompts.Mixed`).

Semantics on per-pixel probabilities p, q of the operands (`logic=`):
  "fuzzy" (default, Zadeh): p | q = max(p, q), p & q = min(p, q), p - q = min(p, 1 - q). These commute with a
    threshold t: (p | q) > t is (p > t) or (q > t), (p & q) > t is both, and (p - q) > t is p > t and
    q < 1 - t, i.e. at t = 0.5 exactly the set algebra of the two binary masks.
  "product" (probabilistic, operands taken as independent): p | q = 1 - (1 - p)(1 - q), p & q = p q,
    p - q = p (1 - q).
Prediction runs each image through the vision tower once: every distinct leaf prompt of every expression is
conditioned in one batch over that encoding, and the expressions are one jitted function of the stacked
leaf logits (on the device, before anything comes back to the host); the combined maps are then resized to
the image's size as `predict` does.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from clipseg_jax import preprocess

LOGICS = ("fuzzy", "product")
DEFAULT_LOGIC = "fuzzy"
OPERATORS = {"|": "union", "&": "intersection", "-": "difference"}
MAX_NESTING = 32  # parentheses deep (the parser recurses: far below Python's limit)
EXPRESSION_STARTS = ("'", '"', "(", "$")  # a prompt starting otherwise is plain text, never parsed


class ExpressionError(ValueError):
  """A malformed prompt expression; the message names the position (1-based) and what was expected."""


@dataclasses.dataclass(frozen=True)
class Text:
  """A quoted text prompt."""

  text: str


@dataclasses.dataclass(frozen=True)
class Operand:
  """`$name`: a prompt bound by `operands=`."""

  name: str


@dataclasses.dataclass(frozen=True)
class Op:
  """`left OP right`, OP one of `|`, `&`, `-`."""

  op: str
  left: Any
  right: Any


@dataclasses.dataclass(frozen=True)
class Leaf:
  """A compiled leaf: the index of its prompt in `Program.prompts`."""

  index: int


def is_expression(prompt) -> bool:
  """Whether a prompt string is to be parsed as an expression: it starts (after spaces) with a quote, a
  parenthesis or `$`. Anything else is a plain text prompt, as before expressions existed."""
  return isinstance(prompt, str) and prompt.lstrip().startswith(EXPRESSION_STARTS)


def _tokens(text: str) -> Iterator[tuple[str, Any, int]]:
  """(kind, value, position) tokens; kinds: "text", "operand", an operator or parenthesis, "end"."""
  i, n = 0, len(text)
  while i < n:
    c = text[i]
    if c.isspace():
      i += 1
    elif c in "|&-()":
      yield c, c, i
      i += 1
    elif c in "'\"":
      start, i, chars = i, i + 1, []
      while i < n and text[i] != c:
        if text[i] == "\\" and i + 1 < n:
          i += 1
        chars.append(text[i])
        i += 1
      if i >= n:
        raise _error(text, start, f"unterminated {c}quoted{c} prompt")
      if not "".join(chars).strip():
        raise _error(text, start, "empty prompt")
      yield "text", "".join(chars), start
      i += 1
    elif c == "$":
      start, i = i, i + 1
      while i < n and (text[i].isalnum() or text[i] == "_"):
        i += 1
      name = text[start + 1 : i]
      if not name or name[0].isdigit():
        raise _error(text, start, "expected a name after $ (letters, digits, _; not starting with a digit)")
      yield "operand", name, start
    else:
      raise _error(text, i, f"unexpected {c!r} (text prompts inside an expression must be quoted)")
  yield "end", None, n


def _error(text: str, pos: int, message: str) -> ExpressionError:
  shown = text if len(text) <= 80 else text[:77] + "..."
  return ExpressionError(f"bad prompt expression {shown!r} at position {pos + 1}: {message}")


def _describe(kind: str, value) -> str:
  return {"end": "the end", "text": f"the prompt {value!r}", "operand": f"${value}"}.get(kind, repr(value))


def parse(text: str):
  """The syntax tree (`Text`, `Operand`, `Op`) of an expression; raises `ExpressionError` on bad input."""
  if not isinstance(text, str):
    raise ExpressionError(f"a prompt expression must be a string, got {type(text).__name__}")
  tokens = list(_tokens(text))
  pos = depth = 0

  def peek():
    return tokens[pos]

  def take():
    nonlocal pos
    pos += 1
    return tokens[pos - 1]

  def binary(op: str, operand):
    def rule():
      left = operand()
      while peek()[0] == op:
        take()
        left = Op(op, left, operand())
      return left

    return rule

  def atom():
    kind, value, at = take()
    if kind == "text":
      return Text(value)
    if kind == "operand":
      return Operand(value)
    if kind == "(":
      nonlocal depth
      depth += 1
      if depth > MAX_NESTING:
        raise _error(text, at, f"parentheses nest deeper than {MAX_NESTING}")
      inner = union()
      depth -= 1
      if peek()[0] != ")":
        raise _error(text, peek()[2], f"expected ')' to close the '(' opened at position {at + 1}")
      take()
      return inner
    raise _error(text, at, f"expected a quoted prompt, $name or '(' but found {_describe(kind, value)}")

  union = binary("|", binary("&", binary("-", atom)))
  tree = union()
  kind, value, at = peek()
  if kind != "end":
    raise _error(text, at, f"expected an operator (| & -) but found {_describe(kind, value)}")
  return tree


def leaves(tree) -> list:
  """The operands (`Text`, `Operand`) of a tree, left to right."""
  if isinstance(tree, Op):
    return leaves(tree.left) + leaves(tree.right)
  return [tree]


@dataclasses.dataclass(frozen=True)
class Program:
  """Expressions compiled against one list of distinct leaf prompts: `trees[i]` (with `Leaf` indices into
  `prompts`) computes expression i."""

  prompts: tuple
  trees: tuple


def compile_expressions(expressions: Sequence, operands: dict | None = None) -> Program:
  """Each expression (a string, parsed if `is_expression`, else one plain text prompt; a visual pair or
  `prompts.Mixed` as it is; or a parsed tree) -> a `Program` whose distinct leaves are encoded once."""
  if isinstance(expressions, str) or not isinstance(expressions, (list, tuple)):
    raise ValueError(f"expressions must be a list, got {type(expressions).__name__}")
  if not expressions:
    raise ValueError("no prompts given")
  operands = dict(operands or {})
  prompts, index = [], {}

  def leaf(prompt) -> Leaf:
    # the same text, or the same object (a visual pair given as a prompt and bound to $name), is one leaf
    key = ("text", prompt) if isinstance(prompt, str) else ("object", id(prompt))
    if key not in index:
      index[key] = len(prompts)
      prompts.append(prompt)
    return Leaf(index[key])

  def build(node):
    if isinstance(node, Op):
      return Op(node.op, build(node.left), build(node.right))
    if isinstance(node, Text):
      return leaf(node.text)
    if node.name not in operands:
      known = ", ".join(f"${k}" for k in operands) or "none"
      raise ExpressionError(f"${node.name} is not bound (operands given: {known})")
    return leaf(operands[node.name])

  trees = []
  for e in expressions:
    if isinstance(e, (Text, Operand, Op)):
      trees.append(build(e))
    elif is_expression(e):
      trees.append(build(parse(e)))
    elif isinstance(e, str):
      trees.append(build(Text(e)))
    else:  # a visual prompt or prompts.Mixed: encode_prompts checks it
      trees.append(leaf(e))
  return Program(tuple(prompts), tuple(trees))


def _apply(op: str, p, q, logic: str, xp=jnp):
  """One operator on probability maps (numpy or jax.numpy as `xp`): the module docstring's semantics."""
  if logic == "fuzzy":
    return {"|": xp.maximum, "&": xp.minimum, "-": lambda a, b: xp.minimum(a, 1.0 - b)}[op](p, q)
  return {"|": lambda a, b: 1.0 - (1.0 - a) * (1.0 - b), "&": lambda a, b: a * b, "-": lambda a, b: a * (1.0 - b)}[op](
    p, q
  )


def _evaluate(tree, probs, logic: str, xp=jnp):
  """probs: [..., L, S, S] leaf probabilities -> [..., S, S] for one compiled tree."""
  if isinstance(tree, Leaf):
    return probs[..., tree.index, :, :]
  return _apply(tree.op, _evaluate(tree.left, probs, logic, xp), _evaluate(tree.right, probs, logic, xp), logic, xp)


def combine_logits_on_host(logits, trees: tuple, logic: str = DEFAULT_LOGIC) -> np.ndarray:
  """`combine_logits` in numpy: nothing to compile per expression (what a server wants, where each
  request may bring new expressions)."""
  probs = preprocess.sigmoid(np.asarray(logits, np.float32))
  return np.stack([_evaluate(t, probs, logic, np) for t in trees], axis=-3)


@functools.partial(jax.jit, static_argnames=("trees", "logic"))
def combine_logits(logits, trees: tuple, logic: str = DEFAULT_LOGIC):
  """Leaf logits [..., L, S, S] -> expression probabilities [..., E, S, S] (one jitted function per set of
  trees and logic)."""
  probs = preprocess.sigmoid(logits.astype(jnp.float32), jnp)
  return jnp.stack([_evaluate(t, probs, logic) for t in trees], axis=-3)


def combine(probs, expression, logic: str = DEFAULT_LOGIC, operands: dict | None = None) -> np.ndarray:
  """Apply one expression to probability maps already computed: `operands` maps each `$name` to its map
  (text operands `"x"` are looked up as `operands["x"]` too). For maps from anywhere, e.g. a cached run."""
  _check_logic(logic)
  tree = parse(expression) if isinstance(expression, str) else expression
  operands = dict(operands or {})

  def value(node):
    if isinstance(node, Op):
      return _apply(node.op, value(node.left), value(node.right), logic, np)
    key = node.text if isinstance(node, Text) else node.name
    if key not in operands:
      raise ExpressionError(f"no probability map given for {key!r}")
    return np.asarray(operands[key], np.float32)

  return value(tree)


def _check_logic(logic):
  if logic not in LOGICS:
    raise ValueError(f"logic must be one of {', '.join(LOGICS)}, got {logic!r}")


def predict_expressions_iter(
  model,
  images: Iterable,
  expressions: Sequence,
  *,
  operands: dict | None = None,
  logic: str = DEFAULT_LOGIC,
  threshold: float | None = None,
  batch_size: int = 4,
  templates: Sequence[str] | None = None,
  align_corners: bool = False,
  on_host: bool = False,
) -> Iterator[dict]:
  """Per image: {"masks": [E, H, W] probabilities (bools with `threshold`) at the image's size,
  "logits": [L, S, S] the distinct leaf prompts' logits, "prompts": the leaves (`Program.prompts`)}.
  on_host: combine the leaves in numpy instead of a function jitted per set of expressions (servers, where
  each request may bring new ones: nothing to compile)."""
  _check_logic(logic)
  preprocess.check_threshold(threshold)
  preprocess.check_batch_size(batch_size)
  program = compile_expressions(list(expressions), operands)
  cond = model.encode_prompts(list(program.prompts), templates=templates)
  combine = combine_logits_on_host if on_host else combine_logits
  return _chunks(model, iter(images), program, cond, logic, threshold, batch_size, align_corners, combine)


def _chunks(model, images, program, cond, logic, threshold, batch_size, align_corners, combine):
  for chunk in preprocess.batches(images, batch_size):
    reduced = model.encode_images(preprocess.batch_pixels(chunk, model.image_size))
    logits = model.decode(reduced, cond)  # [N, L, S, S], on the device
    probs = np.asarray(combine(logits, program.trees, logic))
    logits = np.asarray(logits, np.float32)
    for im, p, lg in zip(chunk, probs, logits):
      p = preprocess.resize_map(p, im.height, im.width, align_corners=align_corners)
      yield {"masks": p > threshold if threshold is not None else p, "logits": lg, "prompts": program.prompts}


def predict_one(model, image, prompts: Sequence, **options) -> np.ndarray:
  """[P, H, W] probabilities of one image: `model.predict` when no prompt is an expression, else
  `predict_expressions` (options: operands=, logic=, on_host=; a plain predict takes none of them)."""
  if any(is_expression(p) for p in prompts):
    return predict_expressions(model, image, list(prompts), **options)[0]
  return model.predict(image, list(prompts))[0]


def predict_expressions(model, images, expressions: Sequence, **options):
  """[n_images, n_expressions, H, W] (a list of [E, H_i, W_i] when sizes differ); options as
  `predict_expressions_iter`."""
  images = list(images) if isinstance(images, (list, tuple)) else [images]
  if not images:
    raise ValueError("no images given")
  outputs = [out["masks"] for out in predict_expressions_iter(model, images, expressions, **options)]
  return np.stack(outputs) if len({o.shape for o in outputs}) == 1 else outputs
