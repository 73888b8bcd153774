"""Orbax checkpoints of a run: train state, the trainable params alone (for `load_model(WORKDIR)`),
and the data iterator's state. Saves are asynchronous; Orbax writes each step to a temporary
directory and renames it when complete, so a killed run never leaves a half-written checkpoint."""

from __future__ import annotations

from pathlib import Path

import orbax.checkpoint as ocp


class Checkpointer:
  def __init__(self, directory, keep: int = 3, asynchronous: bool = True):
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=asynchronous, create=True)
    self.manager = ocp.CheckpointManager(
      Path(directory).absolute(), options=options, item_names=("state", "params", "data")
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data: dict, force: bool = False) -> bool:
    args = ocp.args.Composite(
      state=ocp.args.StandardSave(state), params=ocp.args.StandardSave(state.params), data=ocp.args.JsonSave(data)
    )
    return self.manager.save(step, args=args, force=force)

  def restore(self, abstract_state, shardings=None, step: int | None = None):
    """(state, data state) at `step` (default: latest), placed by `shardings` (any mesh/topology)."""
    step = self.latest_step() if step is None else step
    out = self.manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_placed(abstract_state, shardings)), data=ocp.args.JsonRestore()
      ),
    )
    return out["state"], out["data"]

  def restore_params(self, abstract_params, step: int | None = None):
    step = self.latest_step() if step is None else step
    target = _placed(abstract_params, None)
    out = self.manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))
    return out["params"]

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def _placed(abstract, shardings):
  """Abstract arrays with target shardings (default: the first local device), so that a checkpoint
  written on one topology restores on another."""
  import jax

  if shardings is None:
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shardings = jax.tree.map(lambda _: device, abstract)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
