"""Reading a training run's Orbax checkpoints (`WORKDIR/checkpoints/STEP/{state,params,data}`): the
trained params of the newest step that restores. The trainer's writer (`train.checkpoints.Checkpointer`)
extends this reader; `load_model(WORKDIR)` uses it without any training code.

Each step records sha256 digests of the state and of the params it saved (in its `data` item), checked
when it is restored: a step whose files were damaged afterwards (truncated, deleted, a flipped byte) does
not restore, and restoring falls back to the newest step that does, with a warning naming the step and
the reason. Steps saved before digests existed restore unchecked."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from clipseg_jax.weights.io import content_digest, quiet_orbax

log = logging.getLogger("clipseg_jax.train")
DIGEST = "_sha256"  # the key of the digests in a step's `data` item
ITEMS = ("state", "params", "data")  # what each step holds: the train state, the trainable params, the data state
PARAMS = "params"


class CheckpointError(ValueError):
  """No checkpoint of a directory restores (or the one asked for does not)."""


def _orbax():
  """Orbax, imported when a checkpoint is opened: importing it configures Python's root logger (through
  absl), which would silence the CLI's own logging setup if `import clipseg_jax` did it."""
  import orbax.checkpoint as ocp

  return ocp


class CheckpointReader:
  def __init__(self, directory, keep: int = 3, asynchronous: bool = True):
    ocp = _orbax()
    self.directory = Path(directory).absolute()
    quiet_orbax()  # a failed save or restore is the one line this class raises or logs
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=asynchronous, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def restore_params(self, abstract_params, step: int | None = None):
    """The trainable params of `step`, or by default of the newest step that restores."""
    target = _placed(abstract_params, None)
    ocp = _orbax()

    def load(s):
      out = self.manager.restore(
        s, args=ocp.args.Composite(params=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore())
      )
      self._verify(out[PARAMS], (out["data"] or {}).get(DIGEST, {}).get(PARAMS))
      return out[PARAMS]

    return self._first_restoring(load, step)[1]

  def _first_restoring(self, load, step: int | None):
    steps = [step] if step is not None else sorted(self.all_steps(), reverse=True)
    if not steps:
      raise CheckpointError(f"{self.directory} holds no checkpoint")
    failures = []
    for i, s in enumerate(steps):
      try:
        return s, load(s)
      except Exception as e:  # noqa: BLE001 - any failure (TensorStore, Orbax, JSON, digest) means: not this step
        reason = one_line(e)
        failures.append(f"step {s}: {reason}")
        if i + 1 < len(steps):
          log.warning("checkpoint %s does not restore (%s); trying step %d", self.step_dir(s), reason, steps[i + 1])
    if step is not None:
      raise CheckpointError(f"checkpoint {self.step_dir(step)} does not restore ({failures[0].partition(': ')[2]})")
    raise CheckpointError(f"no checkpoint in {self.directory} restores ({'; '.join(failures)})")

  def _verify(self, tree, expected: str | None):
    """A restored tree must hold finite values and, where the step recorded one, match its digest."""
    leaves = [_host(x) for x in _leaves(tree)]
    if any(x is not None and x.dtype.kind == "f" and not np.all(np.isfinite(x)) for x in leaves):
      raise CheckpointError("it holds non-finite values")
    if expected is not None:
      found = _digest_of(leaves)
      if found is not None and found != expected:
        raise CheckpointError(f"content digest mismatch: saved sha256 {expected[:12]}..., read {found[:12]}...")

  def step_dir(self, step: int) -> Path:
    return self.directory / str(step)

  def reload(self):
    self.manager.reload()

  def close(self):
    self.manager.close()


def _leaves(tree) -> list:
  import jax

  return jax.tree.leaves(tree)


def _host(x) -> np.ndarray | None:
  """A host copy of an array, or None where this process holds only part of it."""
  import jax

  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    if not x.is_fully_replicated:
      return None
    x = x.addressable_data(0)
  return np.asarray(jax.device_get(x))


def _digest_of(leaves: list) -> str | None:
  """Leaves in the tree's order, each framed by its dtype and shape (the format's `_sha256` digests)."""
  return content_digest(((None, x) for x in leaves), lambda _, x: f"{x.dtype.str}{x.shape};")


def digest(tree) -> str | None:
  """sha256 over a tree's arrays (dtype, shape and bytes, in the tree's leaf order), or None where this
  process does not hold all of them."""
  return _digest_of([_host(x) for x in _leaves(tree)])


def one_line(e: BaseException, limit: int = 320) -> str:
  """An exception as one short line: its root cause's first line (Orbax wraps TensorStore's errors,
  e.g. 'OUT_OF_RANGE: Error reading ... in OCDBT database ...', in one that dumps a TensorStore spec)."""
  seen = {id(e)}
  while (cause := e.__cause__ or e.__context__) is not None and id(cause) not in seen:
    seen.add(id(cause))
    e = cause
  text = (str(e).strip().splitlines() or [""])[0].split(" See full TensorStore details")[0]
  if not isinstance(e, CheckpointError):
    text = f"{type(e).__name__}: {text}" if text else type(e).__name__
  return text if len(text) <= limit else text[: limit - 3] + "..."


def _placed(abstract, shardings):
  """Abstract arrays with target shardings (default: the first local device), so that a checkpoint
  written on one topology restores on another."""
  import jax

  if shardings is None:
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shardings = jax.tree.map(lambda _: device, abstract)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


placed = _placed  # for the writer's `restore` (`train.checkpoints`)
