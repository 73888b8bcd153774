"""Training keeps its good state: a diverged run stops before saving, a damaged newest checkpoint falls
back to the newest that restores (and matches its content digest), and one workdir takes one trainer.
Each test injects its fault."""

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SHARED_RUN, training_overrides

from clipseg_jax import load_model
from clipseg_jax.cli.main import main

pytestmark = pytest.mark.slow  # training runs in subprocesses

CONFIG = "synthetic"


@pytest.fixture(scope="module")
def setup(training_root):
  return training_root  # conftest.py: a tiny random CLIP and the tiny synthetic dataset


def overrides(setup, **extra):
  """The shared run's overrides (conftest `trained_run`), with `extra` added or replaced."""
  return training_overrides(setup, **{**SHARED_RUN, **extra})


def run_cli(setup, workdir, expect=0, **extra):
  cmd = [sys.executable, "-m", "clipseg_jax.cli.main", "train", "--config", CONFIG, "--workdir", str(workdir)]
  proc = subprocess.run(
    cmd + overrides(setup, **extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600
  )
  assert proc.returncode == expect, proc.stdout[-3000:]
  return proc.stdout


def saved_steps(workdir) -> list[int]:
  return sorted(int(p.name) for p in (Path(workdir) / "checkpoints").iterdir() if p.name.isdigit())


def template(workdir):
  from clipseg_jax.config import ClipSegConfig
  from clipseg_jax.weights import hf

  return {"decoder": hf.param_template(ClipSegConfig.from_json(Path(workdir) / "model" / "config.json"))["decoder"]}


def params_at(workdir, step):
  from clipseg_jax.train.checkpoints import Checkpointer

  ckpt = Checkpointer(Path(workdir) / "checkpoints")
  try:
    return jax.tree.map(np.asarray, ckpt.restore_params(template(workdir), step=step))
  finally:
    ckpt.close()


def same(a, b) -> bool:
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


@pytest.fixture(scope="module")
def trained(trained_run):
  """The shared 6-step run with checkpoints 2, 4, 6 (copied by each test that damages it)."""
  workdir = trained_run[0]
  assert saved_steps(workdir) == [2, 4, 6]
  return workdir


def data_file(item_dir: Path) -> Path:
  """The largest array data file of an Orbax item (OCDBT)."""
  return max((p for p in item_dir.rglob("*") if p.is_file() and p.parent.name == "d"), key=lambda p: p.stat().st_size)


def damage(src, dst, kind, items=("params", "state"), step=6) -> Path:
  shutil.copytree(src, dst)
  for item in items:
    d = Path(dst) / "checkpoints" / str(step) / item
    f = data_file(d / "ocdbt.process_0")
    if kind == "delete":
      f.unlink()
    elif kind == "truncate":
      os.truncate(f, f.stat().st_size // 2)
    elif kind == "flip":  # uncompressed float32 chunks: a silently different weight, unless caught
      b = bytearray(f.read_bytes())
      b[len(b) // 2] ^= 0x01
      f.write_bytes(bytes(b))
    elif kind == "metadata":
      (d / "_METADATA").unlink()
  return Path(dst)


def test_nonfinite_loss_stops_before_saving(setup, tmp_path):
  """learning_rate=1e6 diverges within a few steps: the run exits 2 naming the step, the checkpoints
  before it stay, nothing non-finite is saved (the old code exited 0 with checkpoints 6, 8, 10 all NaN)."""
  workdir = tmp_path / "nan"
  out = run_cli(setup, workdir, expect=2, **{"total_steps": 10, "optim.learning_rate": 1e6})
  line = next(x for x in out.splitlines() if "error:" in x)
  bad = int(line.split("training diverged at step ")[1].split(":")[0].split()[0])
  saved = saved_steps(workdir)
  assert saved and max(saved) < bad, (saved, line)
  for s in saved:
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params_at(workdir, s)))
  assert not (workdir / ".lock").exists()  # released on the error too


def test_nonfinite_steps_skipped_a_bounded_number_of_times():
  """optim.skip_nonfinite_steps: a NaN step keeps the old params and optimiser state, counted; past the
  bound the next NaN step is recorded (the loop then stops before saving)."""
  import optax

  from clipseg_jax.train import step as steps
  from clipseg_jax.train.guard import TrainingDiverged, check_guard, guarded, initial_guard

  tx = optax.adam(0.1)

  def fn(state, poison):  # a step whose loss and gradient are NaN when poison is NaN
    loss_fn = lambda p: jnp.sum(p["w"] ** 2) * poison
    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt = tx.update(grads, state.opt_state, state.params)
    new = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt)
    return new, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

  state = steps.init_state({"w": jnp.ones(3)}, tx)
  step = jax.jit(guarded(fn, max_skips=2))
  guard = initial_guard()
  state, guard, _ = step(state, guard, 1.0)
  good = jax.tree.map(np.asarray, state)
  for _ in range(2):
    state, guard, _ = step(state, guard, np.nan)
  assert int(guard["skipped"]) == 2 and int(guard["bad_step"]) == -1 and int(state.step) == 3
  assert same(state.params, good.params) and same(state.opt_state, good.opt_state)
  assert check_guard(guard, 2) == 2
  state, guard, _ = step(state, guard, np.nan)  # the third: past the bound
  assert int(guard["bad_step"]) == 4
  with pytest.raises(TrainingDiverged, match="training diverged at step 4 after skipping 2"):
    check_guard(guard, 2, 2, last_saved=2)
  # Without skipping the first NaN step is the one named.
  state = steps.init_state({"w": jnp.ones(3)}, tx)
  _, guard, _ = jax.jit(guarded(fn))(state, initial_guard(), np.nan)
  with pytest.raises(TrainingDiverged, match="at step 1: a non-finite loss"):
    check_guard(guard, 0)


@pytest.mark.parametrize("kind", ["truncate", "delete", "flip"])
def test_load_model_falls_back_from_damaged_newest(trained, tmp_path, caplog, kind):
  """A truncated or deleted array file, or a flipped byte in one (the old code: a raw TensorStore
  traceback, or NaN-free but different weights loaded silently), in the newest checkpoint: load_model
  uses step 4, with a warning naming step 6's directory."""
  step4 = params_at(trained, 4)["decoder"]
  workdir = damage(trained, tmp_path / kind, kind, items=("params",))
  with caplog.at_level(logging.WARNING, logger="clipseg_jax.train"):
    loaded = load_model(workdir)
  warned = [r.getMessage() for r in caplog.records if "does not restore" in r.getMessage()]
  assert len(warned) == 1 and f"{workdir / 'checkpoints' / '6'} does not restore" in warned[0], warned
  assert "trying step 4" in warned[0] and "\n" not in warned[0]
  if kind == "flip":  # a changed value: digest mismatch, or non-finite; a compressed block: fails to decode
    reasons = ("content digest mismatch", "Error reading", "non-finite values")
    assert any(r in warned[0] for r in reasons), warned[0]
  # Folded as load_model folds (activation_scale of the synthetic recipe), compare one unfolded leaf.
  np.testing.assert_array_equal(np.asarray(loaded.params["decoder"]["film_mul"]["kernel"]), step4["film_mul"]["kernel"])
  assert (workdir / "checkpoints" / "6").exists()  # nothing deleted


def test_missing_metadata(setup, trained, tmp_path, caplog):
  """Without its `_METADATA` files, step 6's params item still restores (Orbax reads the arrays by the
  target tree) and its digest confirms them: load_model uses step 6, silently. Its train state (a
  custom dataclass tree) does not: the trainer's restore falls back to step 4 with a warning."""
  from clipseg_jax.train import step as steps
  from clipseg_jax.train.checkpoints import Checkpointer
  from clipseg_jax.train.recipes import load_config

  workdir = damage(trained, tmp_path / "meta", "metadata")
  with caplog.at_level(logging.WARNING, logger="clipseg_jax.train"):
    assert same(params_at(workdir, None), params_at(trained, 6))
  assert not [r for r in caplog.records if "does not restore" in r.getMessage()]
  cfg = load_config(CONFIG, overrides(setup))
  tx = steps.make_optimizer(cfg.optim, cfg.total_steps)
  abstract = jax.eval_shape(lambda p: steps.init_state(p, tx), template(workdir))
  ckpt = Checkpointer(workdir / "checkpoints")
  try:
    with caplog.at_level(logging.WARNING, logger="clipseg_jax.train"):
      state, data, step = ckpt.restore(abstract)
  finally:
    ckpt.close()
  assert step == 4 and data == {"kind": "cached", "step": 4}
  assert f"{workdir / 'checkpoints' / '6'} does not restore" in caplog.text and "trying step 4" in caplog.text
  assert same(state.params, params_at(trained, 4))


def test_no_checkpoint_restores(trained, tmp_path):
  workdir = tmp_path / "none"
  shutil.copytree(trained, workdir)
  for s in (2, 4, 6):
    damage(workdir, tmp_path / "scratch", "delete", items=("params",), step=s)
    shutil.rmtree(workdir)
    shutil.move(tmp_path / "scratch", workdir)
  with pytest.raises(ValueError, match=f"no checkpoint in {workdir / 'checkpoints'} restores .step 6: .*step 2: "):
    load_model(workdir)


def test_resume_falls_back_and_sets_damaged_aside(setup, trained, tmp_path):
  """The trainer resumes from step 4 when step 6's train state is damaged, moves step 6 aside (kept as
  `6.corrupt`, never rotated out in place of a good one) and saves a new 6; a stale lock (the pid of a
  finished process) is taken over."""
  workdir = damage(trained, tmp_path / "resume", "truncate", items=("state",))
  (workdir / ".lock").write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname()}))
  out = run_cli(setup, workdir, **{"total_steps": 8})
  assert "taking over the stale lock" in out
  assert f"{workdir / 'checkpoints' / '6'} does not restore" in out and "trying step 4" in out
  assert f"resumed {workdir} at step 4" in out
  assert saved_steps(workdir) == [4, 6, 8] and (workdir / "checkpoints" / "6.corrupt").is_dir()
  assert not (workdir / ".lock").exists()


def _dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def test_second_trainer_refused(setup, tmp_path, capsys):
  """A lock held by a live process (this one) refuses the trainer before it writes anything."""
  workdir = tmp_path / "busy"
  workdir.mkdir()
  (workdir / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
  args = ["train", "--config", CONFIG, "--workdir", str(workdir)] + overrides(setup)
  assert main(args) == 2
  err = capsys.readouterr().err
  assert f"in use by another trainer (pid {os.getpid()}" in err
  assert not (workdir / "checkpoints").exists() and (workdir / ".lock").exists()


def test_stale_lock_taken_over(tmp_path, caplog):
  from clipseg_jax.train.workdir import WorkdirBusy, WorkdirLock

  dead = _dead_pid()
  (tmp_path / ".lock").write_text(json.dumps({"pid": dead, "host": socket.gethostname()}))
  with caplog.at_level(logging.WARNING, logger="clipseg_jax.train"), WorkdirLock(tmp_path):
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    with pytest.raises(WorkdirBusy, match=f"pid {os.getpid()}"):
      WorkdirLock(tmp_path).acquire()  # a second one, even in this process
  assert f"stale lock {tmp_path / '.lock'} of pid {dead}" in caplog.text
  assert not (tmp_path / ".lock").exists()
