"""`import input_pipeline`: `clipseg_jax.input_pipeline` under the top-level name the design card gives
it (`input_pipeline.raw_examples(name, split, data_dir=...)`, `input_pipeline.open_source(...)`).

A plain module, with no import hook: its submodules are attributes (`input_pipeline.loader.make_loader`),
imported on first use; import statements name them by their real names
(`from clipseg_jax.input_pipeline.loader import make_loader`). clipseg_jax never imports this name, so a
user's own `input_pipeline.py` (the Flax examples' layout) may shadow it without breaking clipseg-jax.
"""

import importlib

from clipseg_jax.input_pipeline import *  # noqa: F403
from clipseg_jax.input_pipeline import __all__  # noqa: F401

_TARGET = "clipseg_jax.input_pipeline"


def __getattr__(name: str):
  """`input_pipeline.X` -> the module `clipseg_jax.input_pipeline.X` (one module object, two names)."""
  if not name.startswith("__"):
    try:
      return importlib.import_module(f"{_TARGET}.{name}")
    except ModuleNotFoundError as e:
      if e.name != f"{_TARGET}.{name}":
        raise
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
