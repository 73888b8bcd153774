"""Training configs: `ml_collections` files driven by `config_flags`, as big_vision and Flax's examples.

A config is a recipe name shipped in `clipseg_jax/configs/` (`synthetic`, `rd64_uni`, ...) or the path
of a user's own file defining `get_config()`. Overrides follow `config_flags`: `--config.KEY=VALUE` or
`--config.KEY VALUE`; the config is locked, and an unknown key is an error listing the valid ones.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import ml_collections
from absl import flags
from ml_collections import config_flags

from clipseg_jax import configs as recipes

RECIPES = Path(recipes.__file__).resolve().parent
PREFIX = "--config."


def recipe_names() -> list[str]:
  """The recipes shipped in the package (resolvable by name)."""
  return sorted(p.stem for p in RECIPES.glob("*.py") if p.stem not in ("__init__", "common"))


def resolve(spec: str | os.PathLike) -> str:
  """A recipe name or a config file path (config_flags' `:ARG` suffix kept) -> a file path."""
  spec = str(spec)
  path, sep, arg = spec.partition(":")
  candidates = [Path(os.path.expanduser(path)), RECIPES / f"{path}.py"]
  found = next((c for c in candidates if c.is_file()), None)
  if found is None:
    raise FileNotFoundError(f"config {path!r} is neither a file nor a shipped recipe ({', '.join(recipe_names())})")
  return f"{found}{sep}{arg}"


def override_keys(args) -> list[str]:
  """The dotted keys named by `--config.KEY=VALUE` / `--config.KEY VALUE` arguments."""
  return [a[len(PREFIX) :].partition("=")[0] for a in args if a.startswith(PREFIX)]


def check_keys(config: ml_collections.ConfigDict, keys):
  """Unknown override keys as one error naming the valid keys where the path went wrong."""
  for key in keys:
    node, walked = config, []
    for name in key.split("."):
      if not isinstance(node, ml_collections.ConfigDict) or name not in node:
        where = ".".join(walked) or "the top level"
        valid = ", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) else "none"
        raise ValueError(f"unknown config key {key!r}; valid keys at {where}: {valid}")
      node, walked = node[name], walked + [name]


def _parse(path: str, args) -> tuple[ml_collections.ConfigDict, list[str]]:
  argv = ["clipseg-jax", f"--config={path}", *args]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, flag_values=values, lock_config=True, sys_argv=argv)
  try:
    rest = values(argv, known_only=False)
  except flags.Error as e:
    raise ValueError(str(e)) from None
  return values.config, rest[1:]


def load_config(spec, overrides=()) -> ml_collections.ConfigDict:
  """`get_config()` of recipe or file `spec`, locked, with `--config.KEY[=]VALUE` overrides applied."""
  path = resolve(spec)
  # From Python, "KEY=VALUE" is accepted too: it means --config.KEY=VALUE.
  overrides = [a if a.startswith("-") or "=" not in a else PREFIX + a for a in map(str, overrides)]
  base, _ = _parse(path, [])
  check_keys(base, override_keys(overrides))
  config, rest = _parse(path, overrides)
  if rest:
    raise ValueError(f"unrecognized arguments: {' '.join(rest)} (overrides are --config.KEY=VALUE)")
  return config


def to_json(config) -> str:
  return json.dumps(config.to_dict(), sort_keys=True, indent=2, default=list)
