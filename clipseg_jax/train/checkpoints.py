"""Orbax checkpoints of a run: train state, the trainable params alone (for `load_model(WORKDIR)`),
and the data iterator's state. Saves are asynchronous; Orbax writes each step to a temporary
directory and renames it when complete, so a killed run never leaves a half-written checkpoint.

Each step also records sha256 digests of the state and of the params it saves (in its `data` item),
checked when it is restored: a step whose files were damaged afterwards (truncated, deleted, a flipped
byte) does not restore, and `restore`/`restore_params` fall back to the newest step that does, with a
warning naming the step and the reason. Steps saved before digests existed restore unchecked."""

from __future__ import annotations

import contextlib
import hashlib
import logging
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp

from clipseg_jax.export import remove_orbax_temporaries
from clipseg_jax.weights.io import quiet_orbax

log = logging.getLogger("clipseg_jax.train")
DIGEST = "_sha256"  # the key of the digests in a step's `data` item


class CheckpointError(ValueError):
  """No checkpoint of a directory restores (or the one asked for does not)."""


class Checkpointer:
  def __init__(self, directory, keep: int = 3, asynchronous: bool = True):
    self.directory = Path(directory).absolute()
    quiet_orbax()  # a failed save or restore is the one line this class raises or logs
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=asynchronous, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "params", "data"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, data: dict, force: bool = False) -> bool:
    digests = {"state": digest(state), "params": digest(state.params)}
    data = {**data, DIGEST: {k: v for k, v in digests.items() if v is not None}}
    args = ocp.args.Composite(
      state=ocp.args.StandardSave(state), params=ocp.args.StandardSave(state.params), data=ocp.args.JsonSave(data)
    )
    with self._writing():
      return self.manager.save(step, args=args, force=force)

  @contextlib.contextmanager
  def _writing(self):
    """A failed (possibly earlier, asynchronous) save as one OSError naming the directory, with the
    temporary step folders Orbax leaves behind removed."""
    try:
      yield
    except Exception as e:  # noqa: BLE001 - Orbax re-raises TensorStore's errors as ValueError/RuntimeError
      remove_orbax_temporaries(self.directory)
      if isinstance(e, CheckpointError):
        raise
      reason = _one_line(e)
      if "RESOURCE_EXHAUSTED" in reason or "No space left" in reason:
        reason = f"no space left on the device ({reason})"
      raise OSError(f"cannot write a checkpoint in {self.directory}: {reason}") from None

  def restore(self, abstract_state, shardings=None, step: int | None = None):
    """(state, data state, step) of `step`, or by default of the newest step that restores (older ones
    are tried, with a warning, while the newer fail), placed by `shardings` (any mesh/topology)."""
    target = _placed(abstract_state, shardings)

    def load(s):
      out = self.manager.restore(
        s, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore())
      )
      data = dict(out["data"] or {})
      self._verify(out["state"], data.pop(DIGEST, {}).get("state"))
      return out["state"], data

    step, (state, data) = self._first_restoring(load, step)
    return state, data, step

  def restore_params(self, abstract_params, step: int | None = None):
    """The trainable params of `step`, or by default of the newest step that restores."""
    target = _placed(abstract_params, None)

    def load(s):
      out = self.manager.restore(
        s, args=ocp.args.Composite(params=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore())
      )
      self._verify(out["params"], (out["data"] or {}).get(DIGEST, {}).get("params"))
      return out["params"]

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
        reason = _one_line(e)
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

  def quarantine_newer(self, step: int) -> list[Path]:
    """Move the steps newer than `step` (ones that did not restore) aside, to `DIR/N.corrupt`, where no
    later save or cleanup of old steps touches them; returns where they went."""
    moved = []
    for s in self.all_steps():
      if s > step:
        target = self.directory / f"{s}.corrupt"
        n = 0
        while target.exists():
          n += 1
          target = self.directory / f"{s}.corrupt.{n}"
        self.step_dir(s).rename(target)
        moved.append(target)
    self.reload()
    return moved

  def reload(self):
    self.manager.reload()

  def wait(self):
    with self._writing():
      self.manager.wait_until_finished()

  def close(self):
    with self._writing():
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
  h = hashlib.sha256()
  for x in leaves:
    if x is None:
      return None
    x = np.ascontiguousarray(x)
    h.update(f"{x.dtype.str}{x.shape};".encode())
    h.update(x.tobytes())
  return h.hexdigest()


def digest(tree) -> str | None:
  """sha256 over a tree's arrays (dtype, shape and bytes, in the tree's leaf order), or None where this
  process does not hold all of them."""
  return _digest_of([_host(x) for x in _leaves(tree)])


def _one_line(e: BaseException, limit: int = 320) -> str:
  """An exception as one short line: its root cause's first line (Orbax wraps TensorStore's errors,
  e.g. 'OUT_OF_RANGE: Error reading ... in OCDBT database ...', in one that dumps a TensorStore spec)."""
  seen = {id(e)}
  while (cause := e.__cause__ or e.__context__) is not None and id(cause) not in seen:
    seen.add(id(cause))
    e = cause
  text = str(e).strip().splitlines()[0] if str(e).strip() else ""
  text = text.split(" See full TensorStore details")[0]
  text = text if isinstance(e, CheckpointError) else f"{type(e).__name__}: {text}"
  return text if len(text) <= limit else text[: limit - 3] + "..."


def _placed(abstract, shardings):
  """Abstract arrays with target shardings (default: the first local device), so that a checkpoint
  written on one topology restores on another."""
  import jax

  if shardings is None:
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shardings = jax.tree.map(lambda _: device, abstract)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
