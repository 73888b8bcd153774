"""A training run's directory, the trainer's side: the lock while a trainer runs in it, and the model
files it writes when a run starts (`write_model`). Reading a workdir as a model needs no training code:
`clipseg_jax.weights.workdir` (the layout) and `clipseg_jax.load_model`."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from pathlib import Path

from clipseg_jax.config import ClipSegConfig
from clipseg_jax.weights.io import write_text_atomic
from clipseg_jax.weights.manifest import Manifest
from clipseg_jax.weights.workdir import BASE, MODEL_DIR, RUN_CONFIG

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


def write_model(workdir: Path, run_json: str, config: ClipSegConfig, base: dict, manifest: Manifest, tokenizer):
  """The files that make a workdir a model (`weights.workdir`): the run's config, the model config, its
  manifest, `base.json` (the CLIP and its fingerprint, which releases before manifests read) and the
  tokenizer (a workdir tokenizes with nothing else)."""
  write_text_atomic(workdir / RUN_CONFIG, run_json + "\n")  # rewritten at every resume: never half-written
  model = workdir / MODEL_DIR
  model.mkdir(exist_ok=True)
  write_text_atomic(model / "config.json", json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
  manifest.write(model)
  write_text_atomic(model / BASE, json.dumps(base) + "\n")
  tokenizer.save_pretrained(str(model))
