"""Loading `ml_collections` config files with `--config.KEY=VALUE` overrides; unknown keys are errors."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import sys
from pathlib import Path

import ml_collections


def load_config(path: str | os.PathLike, overrides=()) -> ml_collections.ConfigDict:
  """`get_config()` of the Python file at `path`, locked, with `KEY=VALUE` overrides applied."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"config file not found: {path}")
  # Recipes import their shared parts as `experiments.configs.common`: put the repository on the path.
  for root in path.resolve().parents:
    if (root / "experiments" / "configs" / "__init__.py").exists():
      if str(root) not in sys.path:
        sys.path.insert(0, str(root))
      break
  spec = importlib.util.spec_from_file_location(f"_clipseg_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"{path} defines no get_config()")
  config = module.get_config()
  config.lock()
  for item in overrides:
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"override {item!r} is not KEY=VALUE")
    set_value(config, key.removeprefix("--config.").removeprefix("config."), value)
  return config


def set_value(config, dotted: str, text: str):
  *parents, leaf = dotted.split(".")
  node = config
  for i, name in enumerate(parents):
    if name not in node:
      raise ValueError(f"unknown config key {'.'.join(parents[:i + 1])!r}")
    node = node[name]
  if leaf not in node:
    raise ValueError(f"unknown config key {dotted!r}; known at this level: {', '.join(sorted(node.keys()))}")
  old = node[leaf]
  node[leaf] = parse_like(text, old, dotted)


def parse_like(text: str, old, key: str):
  """Parse `text` to the type of the current value (tuples, bools and numbers by Python syntax)."""
  if isinstance(old, str):
    return text
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    raise ValueError(f"--config.{key}={text}: not a Python literal for a {type(old).__name__}") from None
  if isinstance(old, bool) != isinstance(value, bool) and old is not None:
    raise ValueError(f"--config.{key}={text}: expected a {type(old).__name__}")
  if isinstance(old, float) and isinstance(value, int):
    value = float(value)
  if isinstance(old, tuple) and isinstance(value, list):
    value = tuple(value)
  if old is not None and not isinstance(value, type(old)):
    raise ValueError(f"--config.{key}={text}: expected a {type(old).__name__}, got {type(value).__name__}")
  return value


def to_json(config) -> str:
  return json.dumps(config.to_dict(), sort_keys=True, indent=2, default=list)
