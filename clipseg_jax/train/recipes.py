"""Training configs: `ml_collections` files driven by `config_flags`, as big_vision and Flax's examples.

A config is a recipe name shipped in `clipseg_jax/configs/` (`synthetic`, `rd64_uni`, ...) or the path
of a user's own file defining `get_config()`. Overrides follow `config_flags`: `--config.KEY=VALUE` or
`--config.KEY VALUE`; the config is locked, and an unknown key is an error listing the valid ones.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import ml_collections
from absl import flags
from ml_collections import config_flags

from clipseg_jax import configs as recipes

RECIPES = Path(recipes.__file__).resolve().parent
PREFIX = "--config."
# Keys a run cannot start with a value outside of (checked where the config has them, before any setup).
AT_LEAST_ONE = ("total_steps", "batch_size", "checkpoint_every", "keep_checkpoints", "log_every")
AT_LEAST_ZERO = ("eval_every", "sample_every", "export_every", "eval_images", "optim.warmup_steps")  # 0: off
NON_NEGATIVE = ("optim.learning_rate", "optim.end_learning_rate", "optim.weight_decay", "optim.grad_clip_norm")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


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
  file = path.rpartition(":")[0] if ":" in Path(path).name else path
  try:
    rest = values(argv, known_only=False)
    config = values.config
  except flags.Error as e:
    # Loading the file itself failed (not an override): config_flags wraps what get_config() raised.
    cause = _user_cause(e) if str(e).startswith("flag --config=") else None
    if cause is not None:
      raise ValueError(f"{file}: get_config() failed: {type(cause).__name__}: {_first_line(cause)}") from None
    raise ValueError(f"{file}: {_first_line(e)}") from None
  except SyntaxError as e:
    raise ValueError(f"{file}: syntax error on line {e.lineno}: {e.msg}") from None
  except Exception as e:  # noqa: BLE001 - whatever a user's get_config() raises, named with its file
    raise ValueError(f"{file}: get_config() failed: {type(e).__name__}: {_first_line(e)}") from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise ValueError(f"{file}: get_config() must return an ml_collections.ConfigDict, got {type(config).__name__}")
  return config, rest[1:]


def _user_cause(e: BaseException) -> BaseException | None:
  """The innermost exception under absl's and ml_collections' wrappers (what get_config() raised), if any."""
  seen, cause = {id(e)}, None
  while (e := e.__cause__ or e.__context__) is not None and id(e) not in seen:
    seen.add(id(e))
    cause = e
  return cause


def _first_line(e: BaseException) -> str:
  return (str(e).strip().splitlines() or [""])[0]


def _get(config, key: str):
  node = config
  for name in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or name not in node:
      return None, False
    node = node[name]
  return node, True


def check_values(config: ml_collections.ConfigDict, source: str = "config"):
  """Values a run would fail on late (or finish on, having done nothing: keep_checkpoints=0) refused
  now, one line naming the key."""

  def number(key, value):
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)

  for key in AT_LEAST_ONE + AT_LEAST_ZERO:
    value, present = _get(config, key)
    least = 1 if key in AT_LEAST_ONE else 0
    if (
      present and value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= least)
    ):
      raise ValueError(f"{source}: {key} must be an integer of at least {least}, got {value!r}")
  for key in NON_NEGATIVE:
    value, present = _get(config, key)
    if present and value is not None and not (number(key, value) and value >= 0):
      raise ValueError(f"{source}: {key} must be a finite number of at least 0, got {value!r}")
  value, present = _get(config, "optim.compute_dtype")
  if present and value not in COMPUTE_DTYPES:
    raise ValueError(f"{source}: optim.compute_dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {value!r}")


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
  check_values(config, f"config {spec}")
  return config


def to_json(config) -> str:
  return json.dumps(config.to_dict(), sort_keys=True, indent=2, default=list)
