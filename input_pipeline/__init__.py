"""An alias of `clipseg_jax.input_pipeline` under its historical top-level name.

The code lives inside the `clipseg_jax` package, which never imports this alias: a user's own
`input_pipeline.py` (the Flax examples' layout) can shadow this name without breaking clipseg-jax.
`import input_pipeline.pcplus` and the like resolve lazily to the same module objects.
"""

import importlib
import importlib.abc
import importlib.util
import sys

from clipseg_jax.input_pipeline import *  # noqa: F403
from clipseg_jax.input_pipeline import __all__  # noqa: F401

_TARGET = "clipseg_jax.input_pipeline"


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  """Finds `input_pipeline.X` as `clipseg_jax.input_pipeline.X` (one module object under two names)."""

  def find_spec(self, fullname, path=None, target=None):
    if not fullname.startswith(__name__ + "."):
      return None
    real = _TARGET + fullname[len(__name__) :]
    if importlib.util.find_spec(real) is None:
      return None
    return importlib.util.spec_from_loader(fullname, self)

  def create_module(self, spec):
    return importlib.import_module(_TARGET + spec.name[len(__name__) :])

  def exec_module(self, module):
    pass  # already executed under its real name


if not any(isinstance(f, _Alias) for f in sys.meta_path):
  sys.meta_path.insert(0, _Alias())
