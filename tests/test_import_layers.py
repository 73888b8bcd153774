"""The package's layers import one way (models -> weights -> preprocessing, prompts, tokenizer ->
inference API -> data, metrics -> evaluation, training -> load_model -> CLI), read off the source with
`ast` (every import, lazy ones inside functions included)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Module-name prefix -> layer; a module may import only from its own layer or lower ones.
LAYERS = [
  ("clipseg_jax.project", 0),
  ("clipseg_jax.config", 0),
  ("clipseg_jax.models", 0),
  ("clipseg_jax.weights", 1),
  ("clipseg_jax.preprocess", 2),
  ("clipseg_jax.prompts", 2),
  ("clipseg_jax.tokenizer", 2),
  ("clipseg_jax.visualize", 2),
  ("clipseg_jax.algebra", 2),  # prompt expressions; drives any model with encode_prompts/encode_images/decode
  ("clipseg_jax.labelmap", 2),
  ("clipseg_jax.instances", 2),
  ("clipseg_jax.api", 3),
  ("clipseg_jax.export", 3),
  ("clipseg_jax.video", 3),  # video files and frame folders through a ClipSeg
  ("clipseg_jax.artifact", 3),  # StableHLO and ONNX artifacts of a ClipSeg
  ("clipseg_jax.pretrained", 3),
  ("clipseg_jax.input_pipeline", 4),
  ("clipseg_jax.metrics", 4),
  ("clipseg_jax.evaluation", 5),
  ("clipseg_jax.train", 5),
  ("clipseg_jax.configs", 5),
  ("clipseg_jax.load", 6),
  ("clipseg_jax.cli", 7),
  ("clipseg_jax.web", 7),
]


def module_name(path: Path) -> str:
  parts = path.relative_to(ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
  """Every module `path` imports, at module level or inside functions."""
  tree, found = ast.parse(path.read_text()), set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      found.add(node.module)
      found.update(f"{node.module}.{a.name}" for a in node.names)  # `from pkg import module`
  return found


def layer(name: str):
  matches = [(len(prefix), rank) for prefix, rank in LAYERS if name == prefix or name.startswith(prefix + ".")]
  return max(matches)[1] if matches else None


GRAPH = {module_name(p): imports(p) for p in sorted((ROOT / "clipseg_jax").rglob("*.py"))}


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if layer(m) is not None))
def test_imports_go_down_the_layers(module):
  upward = sorted(i for i in GRAPH[module] if (layer(i) or -1) > layer(module))
  assert not upward, f"{module} (layer {layer(module)}) imports higher layers: {upward}"


def test_every_module_has_a_layer():
  assert [m for m in GRAPH if m != "clipseg_jax" and layer(m) is None] == []


def test_package_never_imports_the_top_level_alias():
  """A user's own `input_pipeline.py` may shadow the top-level alias: clipseg_jax must not need it."""
  users = sorted(m for m, deps in GRAPH.items() if any(d.split(".")[0] == "input_pipeline" for d in deps))
  assert users == []
  alias = imports(ROOT / "input_pipeline" / "__init__.py")
  assert any(d.startswith("clipseg_jax.input_pipeline") for d in alias)


def test_the_top_level_alias_is_a_plain_module():
  """`input_pipeline.raw_examples` (the design card's name) and its submodules as attributes are the
  package's own objects, with no import hook left in `sys.meta_path`."""
  import sys

  import clipseg_jax.input_pipeline as real
  import input_pipeline
  from clipseg_jax.input_pipeline import loader

  assert input_pipeline.raw_examples is real.raw_examples and input_pipeline.open_source is real.open_source
  assert input_pipeline.loader is loader
  assert not [f for f in sys.meta_path if type(f).__module__.split(".")[0] == "input_pipeline"]
  with pytest.raises(AttributeError, match="no attribute 'nothing'"):
    input_pipeline.nothing  # noqa: B018


def test_no_import_cycles_between_modules():
  edges = {m: {d for d in deps if d in GRAPH and d != m} for m, deps in GRAPH.items() if m != "clipseg_jax"}
  done, stack = set(), []

  def visit(m):
    if m in stack:
      raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(m) :] + [m]))
    if m in done or m == "clipseg_jax":
      return
    stack.append(m)
    for d in sorted(edges.get(m, ())):
      visit(d)
    stack.pop()
    done.add(m)

  for m in sorted(edges):
    visit(m)
