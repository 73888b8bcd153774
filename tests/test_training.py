"""Training: freezing, sharding equivalence, multi-process, kill/resume, SIGTERM, bad input."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import training_overrides

from clipseg_jax import load_model
from clipseg_jax.cli.main import main

pytestmark = pytest.mark.slow  # training runs in subprocesses (10 s to 3 min each)

CONFIG = "synthetic"  # the shipped recipe, by name


@pytest.fixture(scope="module")
def setup(training_root):
  return training_root  # conftest.py: a tiny random CLIP and the tiny synthetic dataset


def overrides(setup, **extra):
  # PC+ negatives and prompt templates on (the synthetic recipe turns both off): the sampler's
  # full path runs under every mesh and process count.
  extra = {"data.pcplus.q_neg": 0.1, "data.pcplus.templates": "('{}','a photo of a {}.')", **extra}
  return training_overrides(setup, **extra)


def run_cli(setup, workdir, *args, devices=None, env=None, wait=True, **extra):
  cmd = [
    sys.executable,
    "-m",
    "clipseg_jax.cli.main",
    "train",
    "--config",
    CONFIG,
    "--workdir",
    str(workdir),
    *args,
    *overrides(setup, **extra),
  ]
  if devices:
    cmd += ["--cpu-devices", str(devices)]
  proc = subprocess.Popen(
    cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})}
  )
  if not wait:
    return proc
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, out[-3000:]
  return out


def decoder(workdir):
  return jax.tree.map(np.asarray, load_model(workdir).params["decoder"])


def norm_rel_err(a, b):
  """||a - b|| / ||b|| over all parameters together (the norm-wise relative error).

  Not the largest elementwise difference: Adam divides each coordinate's momentum by its own gradient
  scale, so where a gradient nearly cancels across steps (or is exactly zero, like a key bias's), a
  1e-7 change of reduction order (another mesh, FSDP-split CLIP matmuls) becomes a ~1e-5 difference
  of that one coordinate. Measured here over four random CLIPs: elementwise up to 1.1e-5 on one,
  ~1e-7 on the rest; norm-wise at most 2.7e-6. Wrong updates show at another scale: leaving out the
  last three of the six steps is 3.4e-3 norm-wise."""
  sq = lambda t: sum(float(np.sum(np.square(np.asarray(x, np.float64)))) for x in jax.tree.leaves(t))
  return (sq(jax.tree.map(lambda x, y: np.asarray(x, np.float64) - np.asarray(y, np.float64), a, b)) / sq(b)) ** 0.5


def test_freezing_no_clip_state_update_or_gradient(setup):
  """CLIP gets no optimiser state and no update; the compiled step has no backward pass through CLIP:
  its FLOPs are CLIP's forward plus the decoder-only step's, not ~3x CLIP's."""
  import jax.numpy as jnp

  from clipseg_jax.models.clipseg import ClipSegModel
  from clipseg_jax.train import freeze
  from clipseg_jax.train import step as steps
  from clipseg_jax.train.recipe_model import initial_params, model_config
  from clipseg_jax.train.recipes import load_config

  cfg = load_config(CONFIG, overrides(setup, **{"optim.warmup_steps": 0}))
  config = model_config(cfg.model)
  module = ClipSegModel(config)
  params = initial_params(config, cfg.model.clip, 0)
  trainable, frozen = freeze.split(params, freeze.labels(params))
  tx = steps.make_optimizer(cfg.optim, 10)
  state = steps.init_state(trainable, tx)
  assert set(trainable) == {"decoder"} and set(frozen) == {"clip"}
  size = lambda tree: sum(np.size(x) for x in jax.tree.leaves(tree))
  assert size(state.opt_state) - 2 * size(trainable) <= 4  # Adam's mu and nu for the decoder, step counts
  b = 4
  rng = np.random.RandomState(0)
  batch = {
    "pixels": rng.randint(0, 255, (b, 64, 64, 3)).astype(np.uint8),
    "mask": (rng.rand(b, 64, 64) > 0.5).astype(np.float32),
    "input_ids": np.tile(np.array([[49406, 320, 2368, 49407, 49407]], np.int32), (b, 1)),
    "attention_mask": np.ones((b, 5), np.int32),
    "support": rng.randn(b, 64, 64, 3).astype(np.float32),  # visual prompts come normalised
    "text_weight": np.full((b,), 0.3, np.float32),
  }
  frozen_before = jax.tree.map(np.array, frozen)
  stream = steps.make_stream_step(module, tx, visual_prompts=True)
  new_state, metrics = jax.jit(stream)(state, frozen, batch)
  assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(frozen), jax.tree.leaves(frozen_before)))
  assert norm_rel_err(new_state.params, trainable) > 0  # the decoder did move

  from clipseg_jax import preprocess

  def clip_forward(frozen, batch):
    f = lambda m, *a: module.apply({"params": frozen}, *a, method=m)
    return (
      f(ClipSegModel.activations, preprocess.normalize(batch["pixels"])),
      f(ClipSegModel.text_embeddings, batch["input_ids"], batch["attention_mask"]),
      f(ClipSegModel.visual_embeddings, batch["support"]),
    )

  acts, text, visual = jax.jit(clip_forward)(frozen, batch)
  tables = {"activations": list(acts), "text": text, "visual": visual}
  idx = {
    "record": jnp.arange(b),
    "text": jnp.arange(b),
    "visual": jnp.arange(b),
    "mask": batch["mask"],
    "text_weight": batch["text_weight"],
  }
  f_stream = steps.count_flops(stream, state, frozen, batch)
  f_clip = steps.count_flops(clip_forward, frozen, batch)
  f_decoder_step = steps.count_flops(steps.make_cached_step(module, tx), state, frozen, tables, idx)
  assert f_clip > 0.2 * f_stream  # a backward pass through CLIP would add about 2 x f_clip
  assert f_stream == pytest.approx(f_clip + f_decoder_step, rel=0.1)


def test_activation_scale_folds_into_the_model(setup, tmp_path):
  """Training on s x CLIP's activations is the HF model with reduce kernels x s: the periodic evaluator
  and load_model(WORKDIR) see the folded weights, so the trained run's loss is the loaded model's."""
  from clipseg_jax.models.clipseg import ClipSegModel
  from clipseg_jax.train import freeze
  from clipseg_jax.train import step as steps
  from clipseg_jax.train.recipe_model import initial_params, model_config
  from clipseg_jax.train.recipes import load_config

  cfg = load_config(CONFIG, overrides(setup))
  config = model_config(cfg.model)
  module = ClipSegModel(config)
  params = initial_params(config, cfg.model.clip, 0)
  trainable, frozen = freeze.split(params, freeze.labels(params))
  rng = np.random.RandomState(0)
  acts = module.apply({"params": frozen}, rng.randn(2, 64, 64, 3).astype(np.float32), method=ClipSegModel.activations)
  cond, mask = rng.randn(2, config.projection_dim).astype(np.float32), (rng.rand(2, 64, 64) > 0.5).astype(np.float32)
  trained_loss = steps.decoder_loss(module, frozen, acts, cond, mask, 0.3)(trainable)
  folded = steps.fold_activation_scale(trainable, 0.3)
  assert not np.allclose(folded["decoder"]["reduces_0"]["kernel"], trainable["decoder"]["reduces_0"]["kernel"])
  np.testing.assert_allclose(steps.decoder_loss(module, frozen, acts, cond, mask)(folded), trained_loss, rtol=1e-5)
  # And through a real run: the loaded decoder is the checkpoint's with reduce kernels x s.
  run_cli(setup, tmp_path / "scaled", **{"total_steps": 2, "model.activation_scale": 0.3})
  from clipseg_jax.train.checkpoints import Checkpointer
  from clipseg_jax.weights import hf

  ckpt = Checkpointer(tmp_path / "scaled" / "checkpoints")
  raw = ckpt.restore_params({"decoder": hf.param_template(config)["decoder"]})["decoder"]
  ckpt.close()
  loaded = decoder(tmp_path / "scaled")
  np.testing.assert_allclose(loaded["reduces_1"]["kernel"], 0.3 * np.asarray(raw["reduces_1"]["kernel"]), rtol=1e-6)
  np.testing.assert_array_equal(loaded["film_mul"]["kernel"], np.asarray(raw["film_mul"]["kernel"]))


@pytest.mark.nightly  # test_freeze.py's mesh comparison trains the decoder (and a CLIP block) on the same meshes
def test_sharding_equivalence(setup, tmp_path):
  """Meshes (8,1), (4,2) with CLIP FSDP-sharded, and (1,1) train to the same decoder."""
  run_cli(setup, tmp_path / "m81", devices=8, **{"mesh.shape": "(8,1)"})
  run_cli(setup, tmp_path / "m42", devices=8, **{"mesh.shape": "(4,2)", "mesh.clip_sharding": "fsdp"})
  run_cli(setup, tmp_path / "m11", **{"mesh.shape": "(1,1)"})
  ref = decoder(tmp_path / "m11")
  assert norm_rel_err(decoder(tmp_path / "m81"), ref) <= 1e-5
  assert norm_rel_err(decoder(tmp_path / "m42"), ref) <= 1e-5


def two_processes(setup, workdir, **extra):
  """A run as 2 processes x 4 CPU devices joined over localhost (gloo collectives)."""
  import socket

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  return [
    run_cli(
      setup,
      workdir,
      "--coordinator",
      f"127.0.0.1:{port}",
      "--num-processes",
      "2",
      "--process-id",
      str(i),
      devices=4,
      wait=False,
      **extra,
    )
    for i in range(2)
  ]


# The two-process runs' settings, shared so that the SIGTERM test reuses the programs compiled for the first.
TWO_PROCESS_RUN = {"mesh.shape": "(4,2)", "mesh.clip_sharding": "fsdp", "eval_every": 3}


def test_two_processes_equal_one(setup, tmp_path):
  """2 processes x 4 CPU devices (gloo collectives) on localhost == 1 process x 8 devices. The
  multi-process run also splits CLIP over the model axis (fsdp) and evaluates periodically (process 0
  reads its host copy of the split CLIP)."""
  procs = two_processes(setup, tmp_path / "multi", **TWO_PROCESS_RUN)
  outs = [p.communicate(timeout=600)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), outs[0][-2000:] + outs[1][-2000:]
  single = run_cli(setup, tmp_path / "single", devices=8, eval_every=3)
  assert norm_rel_err(decoder(tmp_path / "multi"), decoder(tmp_path / "single")) <= 1e-5
  # Each process scored half the held-out images; the summed metrics are the single process's.
  final = lambda out: dict(kv.split("=") for kv in out.split("final: ")[-1].splitlines()[0].split(", "))
  multi, one = final(outs[0]), final(single)
  for k in ("eval/iou_fg@0.5", "eval/iou_fg_best", "eval/miou_best", "eval/ap"):
    assert float(multi[k]) == pytest.approx(float(one[k]), abs=1e-3), k


@pytest.mark.parametrize("cached", [True, False])
def test_kill_and_resume_matches_uninterrupted(setup, tmp_path, cached):
  """SIGKILL mid-run, rerun the same command: it resumes from the last checkpoint (train state and
  data position: the grain iterator state, or the cached sampler's step) and ends where an
  uninterrupted run ends."""
  extra = {"total_steps": 40} if cached else {"total_steps": 40, "data.pcplus.augment": True}
  killed, straight = kill_and_resume(setup, tmp_path, **extra)
  assert norm_rel_err(decoder(killed), decoder(straight)) <= 1e-6


def kill_and_resume(setup, tmp_path, **extra):
  """(killed, straight) workdirs: one run uninterrupted; one SIGKILLed after its first checkpoint and
  rerun with the same command."""
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  run_cli(setup, straight, **extra)
  proc = run_cli(setup, killed, wait=False, **extra)
  deadline = time.time() + 300
  while not (killed / "checkpoints" / "2").exists() and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  steps_done = [int(p.name) for p in (killed / "checkpoints").iterdir() if p.name.isdigit()]
  assert steps_done and max(steps_done) < extra["total_steps"], "the run finished before it could be killed"
  run_cli(setup, killed, **extra)
  return killed, straight


FIRST_SAVE = 3  # the SIGTERM runs save every 3 steps: their first checkpoint says they are training


def wait_until_training(workdir: Path):
  """Until a run has saved its first checkpoint (it is past compilation and taking steps)."""
  deadline = time.time() + 300
  while not (workdir / "checkpoints" / str(FIRST_SAVE)).exists() and time.time() < deadline:
    time.sleep(0.1)


def sigterm_step(out: str) -> int:
  """The step a run said it saved at SIGTERM."""
  found = re.findall(r"SIGTERM: saved step (\d+)", out)
  assert found, out[-2000:]
  return int(found[-1])


def test_sigterm_saves_and_exits(setup, tmp_path):
  proc = run_cli(setup, tmp_path / "term", wait=False, **{"total_steps": 100000, "checkpoint_every": FIRST_SAVE})
  wait_until_training(tmp_path / "term")
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out[-2000:]
  saved = [int(p.name) for p in (tmp_path / "term" / "checkpoints").iterdir() if p.name.isdigit()]
  assert FIRST_SAVE <= sigterm_step(out) == max(saved) < 100000


def test_sigterm_to_one_process_stops_all(setup, tmp_path):
  """Preemption that reaches only process 1: both processes save the same step and exit cleanly."""
  procs = two_processes(
    setup, tmp_path / "term2", **{**TWO_PROCESS_RUN, "total_steps": 100000, "checkpoint_every": FIRST_SAVE}
  )
  wait_until_training(tmp_path / "term2")
  procs[1].send_signal(signal.SIGTERM)
  outs = [p.communicate(timeout=180)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), outs[0][-2000:] + outs[1][-2000:]
  saved = [int(p.name) for p in (tmp_path / "term2" / "checkpoints").iterdir() if p.name.isdigit()]
  assert FIRST_SAVE <= sigterm_step(outs[0]) == sigterm_step(outs[1]) == max(saved) < 100000


def test_bad_input_fails_before_compute(setup, trained_run, tmp_path, capsys):
  workdir = tmp_path / "w"
  shutil.copytree(trained_run[0], workdir)
  shared = lambda **extra: [*trained_run[1], *(f"--config.{k}={v}" for k, v in extra.items())]
  args = ["train", "--config", CONFIG, "--workdir", str(workdir)]
  assert main(args + ["--config.batchsize=4"]) == 2
  assert "unknown config key 'batchsize'" in capsys.readouterr().err
  fresh = ["train", "--config", CONFIG, "--workdir", str(tmp_path / "fresh")]
  assert main(fresh + shared(**{"mesh.shape": "(3,1)"})) == 2
  assert "needs 3 devices" in capsys.readouterr().err
  assert main(args + shared(**{"optim.learning_rate": 0.5})) == 2
  assert "holds a run of another config" in capsys.readouterr().err
  # The CLIP source's weights changed since the run (e.g. new embedded weights): its decoder no longer fits.
  base_json = workdir / "model" / "base.json"
  base = json.loads(base_json.read_text())
  assert len(base["clip_sha256"]) == 64
  load_model(workdir)
  base_json.write_text(json.dumps({**base, "clip_sha256": "0" * 64}))
  with pytest.raises(ValueError, match="trained on other weights of the CLIP"):
    load_model(workdir)
  assert main(args + shared(total_steps=8)) == 2
  assert "trained on other weights of the CLIP" in capsys.readouterr().err
  # A damaged base.json: one line naming it, from loading and from resuming alike (weights.workdir.read_base).
  base_json.write_text(json.dumps({"clip_sha256": base["clip_sha256"]}))
  with pytest.raises(ValueError, match=r"model/base.json does not name the run's CLIP"):
    load_model(workdir)
  assert main(args + shared(total_steps=8)) == 2
  assert "base.json does not name the run's CLIP" in capsys.readouterr().err


def test_batch_must_divide_data_axis(setup, tmp_path):
  proc = run_cli(setup, tmp_path / "b", devices=8, wait=False, **{"batch_size": 12, "mesh.shape": "(8,1)"})
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 2 and "does not divide over the 8 devices" in out


def test_demo_end_to_end(tmp_path, capsys):
  """`clipseg-jax demo` on the tiny synthetic set: builds the data, trains the main run and both
  ablations on the embedded CLIP, scores them, writes overlays; its model loads and predicts."""
  assert (
    main(["demo", "--out", str(tmp_path), "--dataset", "synthetic/tiny", "--steps", "3", "--eval-images", "2"]) == 0
  )
  out = capsys.readouterr().out
  rows = [line for line in out.splitlines() if line.startswith(("| CLIPSeg", "| ablation"))]
  assert len(rows) == 3 and "(2 images" in out
  # The main result is printed as soon as its run is scored, before the ablations train.
  assert -1 < out.find("-> CLIPSeg (pretrained") < out.find("== ablation: randomly"), out
  assert all((tmp_path / f"overlay_{i}.png").exists() for i in range(3))
  model = load_model(tmp_path / "run")
  assert json.loads((tmp_path / "run" / "model" / "base.json").read_text())["clip"] == "embedded:synthetic-clip"
  probs = model.predict(np.zeros((40, 50, 3), np.uint8), ["red circle"])
  assert probs.shape == (1, 1, 40, 50)
  # The workdir carries its tokenizer and records what the decoder saw (text prompts only here), which
  # picks the evaluator's predictor and refuses tasks with support images.
  assert (tmp_path / "run" / "model" / "tokenizer.json").exists()
  assert model.manifest.trained_prompts == ("text",)
  from clipseg_jax.evaluation.protocols import NoPromptPredictor, check_model_fits, predictor_for

  assert not isinstance(predictor_for(model), NoPromptPredictor)
  assert isinstance(predictor_for(load_model(tmp_path / "withhold_prompt")), NoPromptPredictor)
  with pytest.raises(ValueError, match="trained on text prompts only"):
    check_model_fits(model, "pascal5i")


@pytest.mark.nightly  # the trainer's SIGTERM path is test_sigterm_saves_and_exits; this adds the demo's message
def test_demo_stops_cleanly_at_sigterm(tmp_path):
  """A preempted demo saves its run, says how to resume, scores nothing and exits 0."""
  proc = subprocess.Popen(
    [
      sys.executable,
      "-m",
      "clipseg_jax.cli.main",
      "demo",
      "--out",
      str(tmp_path),
      "--dataset",
      "synthetic/tiny",
      "--steps",
      "100000",
      "--eval-images",
      "2",
    ],
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )
  wait_until_training(tmp_path / "run")
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out[-2000:]
  assert "stopped at a SIGTERM" in out and "| CLIPSeg" not in out, out[-2000:]
  saved = [int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()]
  assert saved and 0 < max(saved) < 100000
