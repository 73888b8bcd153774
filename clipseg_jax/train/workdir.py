"""A training run's directory as a model: its CLIP source plus the latest trained decoder.

Layout (written by the trainer): `config.json` (the run's config), `model/config.json` (the
ClipSegConfig), `model/base.json` (the CLIP source and its fingerprint), `model/` tokenizer files,
`checkpoints/` (Orbax), `.lock` (while a trainer runs in it)."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from pathlib import Path

import jax.numpy as jnp

from clipseg_jax.api import ClipSeg
from clipseg_jax.config import ClipSegConfig
from clipseg_jax.tokenizer import load_tokenizer
from clipseg_jax.train import freeze
from clipseg_jax.train.checkpoints import Checkpointer
from clipseg_jax.train.model import check_backbone, check_fingerprint, clip_params, initial_decoder, model_config_of
from clipseg_jax.train.step import fold_activation_scale
from clipseg_jax.weights import hf

log = logging.getLogger("clipseg_jax.train")


class WorkdirBusy(ValueError):
  """Another trainer holds the workdir."""


class WorkdirLock:
  """`WORKDIR/.lock` (pid, hostname) while a trainer runs in the workdir: a second trainer is refused.
  Created atomically (O_CREAT | O_EXCL); a lock left by a process that is gone from this host (a
  SIGKILLed run) is stale and taken over with a warning. Removed on exit. `enabled=False` (processes
  other than 0 of a multi-process run) makes it a no-op."""

  def __init__(self, workdir: Path, enabled: bool = True):
    self.path, self.enabled, self.held = Path(workdir) / ".lock", enabled, False
    self.token = uuid.uuid4().hex

  def __enter__(self):
    if self.enabled:
      self.acquire()
    return self

  def __exit__(self, *_):
    self.release()

  def acquire(self):
    record = {"pid": os.getpid(), "host": socket.gethostname(), "token": self.token, "started": time.time()}
    for _ in range(3):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        self._take_over_if_stale()
        continue
      with os.fdopen(fd, "w") as f:
        f.write(json.dumps(record) + "\n")
      self.held = True
      return
    raise WorkdirBusy(f"could not take the lock {self.path}")

  def _take_over_if_stale(self):
    """Removes the lock if its process is gone from this host; raises WorkdirBusy if it may be alive."""
    try:
      holder = json.loads(self.path.read_text())
      pid, host = int(holder["pid"]), str(holder["host"])
    except FileNotFoundError:
      return  # released meanwhile: try again
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise WorkdirBusy(
        f"{self.path.parent} has an unreadable lock {self.path} ({e}); if no trainer runs there, delete it"
      ) from None
    if host != socket.gethostname():
      raise WorkdirBusy(
        f"{self.path.parent} is in use by another trainer (pid {pid} on host {host}, per {self.path}); "
        "if that run is gone, delete the lock"
      )
    if pid != os.getpid() and not _alive(pid):
      log.warning("taking over the stale lock %s of pid %d (no longer running)", self.path, pid)
      self.path.unlink(missing_ok=True)
      return
    raise WorkdirBusy(
      f"{self.path.parent} is in use by another trainer (pid {pid}, per {self.path}); "
      "wait for it to finish or stop it, or use another --workdir"
    )

  def release(self):
    if not self.held:
      return
    self.held = False
    try:
      if json.loads(self.path.read_text()).get("token") == self.token:
        self.path.unlink()
    except (OSError, ValueError):
      pass


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # another user's process
  return True


def read_json(path: Path) -> dict:
  """A workdir's JSON file as a dict, or one error naming it (a damaged or hand-edited file)."""
  try:
    raw = json.loads(path.read_text())
  except FileNotFoundError:
    raise FileNotFoundError(f"{path} is missing: the workdir {path.parent} is incomplete") from None
  except (ValueError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is not valid JSON (damaged?): {e}") from None
  if not isinstance(raw, dict):
    raise ValueError(f"{path} should hold a JSON object, got {type(raw).__name__}")
  return raw


def is_workdir(path: Path) -> bool:
  return path.is_dir() and (path / "checkpoints").is_dir() and (path / "model" / "base.json").exists()


def load_workdir(path: Path, dtype=jnp.float32) -> ClipSeg:
  """The latest checkpoint of the run in `path` as a ClipSeg: its trained leaves (the decoder, and any
  CLIP leaves the freeze rules fine-tuned) over the base CLIP."""
  try:
    config = ClipSegConfig.from_json(path / "model" / "config.json")
  except (OSError, ValueError, TypeError, KeyError) as e:
    raise ValueError(f"{path / 'model' / 'config.json'} is not a valid model config (damaged?): {e}") from None
  base = read_json(path / "model" / "base.json")
  run = read_json(path / "config.json")
  template = hf.param_template(config)
  labels = freeze.labels(template, freeze.rules_of(run.get("optim", {})))
  trainable, frozen = freeze.split(template, labels)
  ckpt = Checkpointer(path / "checkpoints")
  try:
    if ckpt.latest_step() is None:
      raise FileNotFoundError(f"{path} holds no checkpoint yet")
    # The newest step that restores and matches its digest (a damaged newer one: a warning).
    trained = ckpt.restore_params(trainable)
  finally:
    ckpt.close()
  clip_config = model_config_of(base["clip"])
  if clip_config is not None:
    check_backbone(config, clip_config, f"the decoder in {path}", base["clip"])
  clip = clip_params(config, base["clip"])
  check_fingerprint(path, base, clip)
  params = {"clip": clip}
  if "decoder" in frozen:  # decoder leaves the rules froze keep their initial values (the run's seed)
    params["decoder"] = initial_decoder(config, run.get("seed", 0))
  params = freeze.merge(freeze.split(params, labels)[1], trained)
  params = fold_activation_scale(params, run["model"].get("activation_scale", 1.0))
  return ClipSeg(
    config,
    params,
    load_tokenizer(path / "model"),
    dtype,
    image_size=run["data"]["pcplus"]["image_size"],
  )
