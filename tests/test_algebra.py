"""Prompt algebra: the parser, each operator in both logics against hand-computed numbers, prediction
through the tiny random model against leaves predicted separately and combined with numpy here, and the CLI
on the embedded model."""

import numpy as np
import pytest
from PIL import Image

from clipseg_jax import algebra
from clipseg_jax.algebra import ExpressionError, Op, Operand, Text
from clipseg_jax.cli.main import main
from clipseg_jax.preprocess import resize_map

P = np.array([[0.2, 0.9], [0.0, 1.0]], np.float32)
Q = np.array([[0.5, 0.3], [1.0, 0.25]], np.float32)
# By hand: fuzzy = max / min / min(p, 1 - q); product = 1 - (1-p)(1-q) / pq / p(1-q).
EXPECTED = {
  ("fuzzy", "|"): [[0.5, 0.9], [1.0, 1.0]],
  ("fuzzy", "&"): [[0.2, 0.3], [0.0, 0.25]],
  ("fuzzy", "-"): [[0.2, 0.7], [0.0, 0.75]],
  ("product", "|"): [[0.6, 0.93], [1.0, 1.0]],
  ("product", "&"): [[0.1, 0.27], [0.0, 0.25]],
  ("product", "-"): [[0.1, 0.63], [0.0, 0.75]],
}


@pytest.mark.parametrize("logic, op", sorted(EXPECTED))
def test_each_operator_by_hand(logic, op):
  expected = np.array(EXPECTED[logic, op], np.float32)
  got = algebra.combine(None, f"$p {op} $q", logic, operands={"p": P, "q": Q})
  np.testing.assert_allclose(got, expected, atol=1e-6)
  # the jitted path: from logits of the same probabilities (clipped away from 0 and 1 to stay finite)
  p, q = np.clip(P, 1e-6, 1 - 1e-6), np.clip(Q, 1e-6, 1 - 1e-6)
  logits = np.log(np.stack([p, q]) / (1 - np.stack([p, q])))
  program = algebra.compile_expressions([f'"p" {op} "q"'])
  jitted = np.asarray(algebra.combine_logits(logits, program.trees, logic))[0]
  np.testing.assert_allclose(jitted, expected, atol=2e-6)


def test_fuzzy_logic_at_one_half_is_set_algebra_of_the_masks():
  rng = np.random.default_rng(0)
  p, q, r = rng.random((3, 40, 40)).astype(np.float32)
  a, b, c = p > 0.5, q > 0.5, r > 0.5
  ops = {"p": p, "q": q, "r": r}
  assert np.array_equal(algebra.combine(None, "$p - $q", operands=ops) > 0.5, a & ~b)
  assert np.array_equal(algebra.combine(None, "($p | $q) & $r", operands=ops) > 0.5, (a | b) & c)


def test_parse_precedence_associativity_quotes_and_operands():
  a, b, c = Text("a"), Text("b"), Text("c")
  assert algebra.parse('"a" | "b" & "c"') == Op("|", a, Op("&", b, c))
  assert algebra.parse('"a" & "b" - "c"') == Op("&", a, Op("-", b, c))  # `-` binds tighter, as for sets
  assert algebra.parse('"a" - "b" - "c"') == Op("-", Op("-", a, b), c)  # left-associative
  assert algebra.parse('("a" | "b") & "c"') == Op("&", Op("|", a, b), c)
  assert algebra.parse("  'it\\'s' | $ref_2 ") == Op("|", Text("it's"), Operand("ref_2"))
  assert algebra.parse('"head - ear"') == Text("head - ear")  # operators inside quotes are text
  assert algebra.is_expression('"a" - "b"') and algebra.is_expression("($x)")
  assert not algebra.is_expression("a red circle") and not algebra.is_expression("head - ear")


@pytest.mark.parametrize(
  "text, position, words",
  [
    ('"a" | (b', 8, "must be quoted"),
    ('"a" | ("b"', 11, "expected ')'"),
    ('"a" "b"', 5, "expected an operator"),
    ('"a" |', 6, "found the end"),
    ('"abc', 1, "unterminated"),
    ("$1x", 1, "expected a name"),
    ('"" | "a"', 1, "empty prompt"),
    ("", 1, "found the end"),
    ('"a")', 4, "expected an operator"),
    ("(" * 40 + '"a"' + ")" * 40, 33, "nest deeper than 32"),  # a bound, not a RecursionError
  ],
)
def test_parse_errors_name_the_position(text, position, words):
  with pytest.raises(ExpressionError) as e:
    algebra.parse(text)
  message = str(e.value)
  assert f"at position {position}:" in message and words in message and "\n" not in message


def test_compile_shares_leaves_and_checks_operands():
  program = algebra.compile_expressions(['"a" | "b"', '"b" - "a"', "a", "c"])
  assert program.prompts == ("a", "b", "c")
  with pytest.raises(ExpressionError, match=r"\$ref is not bound"):
    algebra.compile_expressions(['"a" - $ref'])


def _leaves(model, image, prompts):
  return model.predict(image, prompts)[0]


def test_predict_expression_matches_leaves_combined_in_numpy(tiny_model, monkeypatch):
  s = tiny_model.image_size  # at the model's resolution the resize is the identity: maps compare exactly
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (s, s, 3), np.uint8)
  support = rng.integers(0, 256, (48, 40, 3), np.uint8)
  support_mask = np.zeros((48, 40), bool)
  support_mask[10:30, 5:25] = True
  ref = (support, support_mask)
  a, b, c, v = _leaves(tiny_model, image, ["a cat", "a dog", "grass", ref])
  calls = []
  encode = tiny_model.encode_images
  monkeypatch.setattr(tiny_model, "encode_images", lambda x: calls.append(x.shape) or encode(x))
  exprs = ['"a cat" | "a dog"', '("a cat" | "a dog") & "grass"', '"a cat" - $ref', "grass"]
  fuzzy = tiny_model.predict_expressions(image, exprs, operands={"ref": ref})
  product = tiny_model.predict_expressions([image, image], exprs, operands={"ref": ref}, logic="product")
  assert len(calls) == 2  # one vision pass per call, however many leaves
  expected_fuzzy = [np.maximum(a, b), np.minimum(np.maximum(a, b), c), np.minimum(a, 1 - v), c]
  expected_product = [1 - (1 - a) * (1 - b), (1 - (1 - a) * (1 - b)) * c, a * (1 - v), c]
  np.testing.assert_allclose(fuzzy[0], np.stack(expected_fuzzy), atol=1e-6)
  assert product.shape == (2, 4, s, s)
  np.testing.assert_allclose(product[1], np.stack(expected_product), atol=1e-6)
  one = tiny_model.predict_expression(image, '"a cat" - "a dog"', threshold=0.5)
  assert one.dtype == bool and np.array_equal(one[0], np.minimum(a, 1 - b) > 0.5)


def test_predict_expression_bad_options(tiny_model):
  image = np.zeros((32, 32, 3), np.uint8)
  with pytest.raises(ValueError, match="logic must be one of"):
    tiny_model.predict_expression(image, '"a"', logic="boolean")
  with pytest.raises(ExpressionError, match="position 7"):
    tiny_model.predict_expression(image, '"a" & ')


def test_cli_expression_on_the_embedded_model(tmp_path, capsys):
  """Expressions beside a plain prompt (which keeps its file names and its plain sigmoid), a visual prompt as
  the operand $support1."""
  from clipseg_jax.input_pipeline import synthetic

  examples, _ = synthetic.scene_examples(0, 0)
  triangle = next(e["mask"] for e in examples if e["phrase"] == "green triangle")
  Image.fromarray(examples[0]["image"]).save(tmp_path / "scene.png")
  Image.fromarray(triangle).save(tmp_path / "triangle.png")
  support = ["--support", str(tmp_path / "scene.png"), "--support-mask", str(tmp_path / "triangle.png")]
  expr, visual = '"the star" - "blue star"', '"blue star" | $support1'
  args = ["segment", str(tmp_path / "scene.png"), "--prompt", "blue star", "--prompt", expr, "--out"]
  assert main([*args, str(tmp_path / "out"), "--prompt", visual, *support, "--logits"]) == 0
  leaves = np.load(tmp_path / "out" / "scene_logits.npz")
  assert list(leaves["prompts"]) == ["blue star", "the star", "support scene"]  # distinct leaves, decoded once
  blue, star, ref = 1 / (1 + np.exp(-leaves["logits"].astype(np.float64)))
  for name, expected in (
    ("0_blue-star", blue),
    ("1_the-star-blue-star", np.minimum(star, 1 - blue)),
    ("2_blue-star-support1", np.maximum(blue, ref)),
    ("3_support-scene", ref),
  ):
    written = np.asarray(Image.open(tmp_path / "out" / f"scene_{name}_mask.png"), np.float32) / 255
    expected = resize_map(expected, *written.shape)  # combined at the model's size, then resized
    assert np.abs(written - expected).max() <= 0.5 / 255 + 1e-5  # an 8-bit PNG
    assert (tmp_path / "out" / f"scene_{name}_overlay.png").exists()
  assert main([*args, str(tmp_path / "bad"), "--prompt", '"a" |']) == 2
  assert "at position 6: expected a quoted prompt" in capsys.readouterr().err
  assert not (tmp_path / "bad").exists()  # refused before anything was written


def test_host_combination_equals_the_jitted_one():
  """Servers combine in numpy (nothing compiled per expression): the same numbers as the device path."""
  rng = np.random.RandomState(3)
  logits = rng.randn(2, 3, 8, 8).astype(np.float32) * 4
  program = algebra.compile_expressions(['"a" - ("b" | "c")', '"a" & "c"', "b"])
  for logic in algebra.LOGICS:
    want = np.asarray(algebra.combine_logits(logits, program.trees, logic))
    got = algebra.combine_logits_on_host(logits, program.trees, logic)
    np.testing.assert_allclose(got, want, atol=1e-6)
