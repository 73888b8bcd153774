"""Orbax checkpoints of a run, written: train state, the trainable params alone (for `load_model(WORKDIR)`),
and the data iterator's state. Saves are asynchronous; Orbax writes each step to a temporary
directory and renames it when complete, so a killed run never leaves a half-written checkpoint.

Reading (the digests each step records and checks, the fallback to the newest step that restores) is
`clipseg_jax.weights.checkpoints`, which loading a workdir uses without training code."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import orbax.checkpoint as ocp

from clipseg_jax.export import remove_orbax_temporaries
from clipseg_jax.weights.checkpoints import DIGEST, CheckpointError, CheckpointReader, digest, one_line, placed

log = logging.getLogger("clipseg_jax.train")


class Checkpointer(CheckpointReader):
  """The reader, and the trainer's writes: asynchronous saves, the whole train state restored."""

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
      reason = one_line(e)
      if "RESOURCE_EXHAUSTED" in reason or "No space left" in reason:
        reason = f"no space left on the device ({reason})"
      raise OSError(f"cannot write a checkpoint in {self.directory}: {reason}") from None

  def restore(self, abstract_state, shardings=None, step: int | None = None):
    """(state, data state, step) of `step`, or by default of the newest step that restores (older ones
    are tried, with a warning, while the newer fail), placed by `shardings` (any mesh/topology)."""
    target = placed(abstract_state, shardings)

    def load(s):
      out = self.manager.restore(
        s, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore())
      )
      data = dict(out["data"] or {})
      self._verify(out["state"], data.pop(DIGEST, {}).get("state"))
      return out["state"], data

    step, (state, data) = self._first_restoring(load, step)
    return state, data, step

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

  def wait(self):
    with self._writing():
      self.manager.wait_until_finished()

  def close(self):
    with self._writing():
      self.manager.close()
