"""Issue 25's crashes and losses, each reproduced as a user (or a full disk, or a flipped byte) would
cause it: bf16 predictions, exports that would overwrite or lose work, damaged files, the original
format's round trip, flags and training configs refused before any work."""

import base64
import errno
import io
import json
import logging
import shutil
import threading
import urllib.request

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from clipseg_jax import load_model
from clipseg_jax.cli.main import main
from clipseg_jax.train.recipes import load_config


def scene(h=40, w=56, seed=0) -> np.ndarray:
  return np.random.RandomState(seed).randint(0, 256, (h, w, 3), np.uint8)


@pytest.fixture(scope="module")
def bf16_model(tiny_dir):
  return load_model(tiny_dir, dtype=jnp.bfloat16)


def test_bfloat16_predict(bf16_model, tiny_model):
  """bf16 decoded every prediction through the fused attention with a [N, P, ...] batch it rejects."""
  image = scene()
  support_mask = np.zeros((40, 56), bool)
  support_mask[10:20, 10:30] = True
  prompts = ["a cat", "a dog", (scene(seed=1), support_mask)]
  got = bf16_model.predict([image, image], prompts)
  want = tiny_model.predict([image, image], prompts)
  assert got.shape == want.shape == (2, 3, 40, 56)
  assert np.abs(got - want).max() < 0.05  # bf16 against float32: close, not equal


@pytest.mark.slow  # ~35 s on 2 CPU cores: three more bf16 compilations
def test_bfloat16_segment_serve_and_app(bf16_model, tiny_dir, tmp_path):
  image = scene()
  Image.fromarray(image).save(tmp_path / "a.png")
  args = ["segment", str(tmp_path / "a.png"), "--prompt", "a cat", "--checkpoint", tiny_dir, "--dtype", "bfloat16"]
  assert main([*args, "--out", str(tmp_path / "out")]) == 0
  assert (tmp_path / "out" / "a_0_a-cat_mask.png").is_file()

  from clipseg_jax.web.gradio_app import AppLimits, AppSegmenter
  from clipseg_jax.web.server import make_server

  srv = make_server(bf16_model, "bf16", port=0, quiet=True)
  threading.Thread(target=srv.serve_forever, daemon=True).start()
  try:
    host, port = srv.server_address[:2]
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    body = json.dumps({"image": base64.b64encode(buf.getvalue()).decode(), "prompts": ["a cat"]})
    req = urllib.request.Request(
      f"http://{host}:{port}/api/segment", data=body.encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as r:
      assert r.status == 200 and len(json.loads(r.read())["masks"]) == 1
  finally:
    srv.shutdown()
    srv.server_close()
  app = AppSegmenter(bf16_model, AppLimits(), tmp_path / "app", warm_up=False)
  assert len(app(str(tmp_path / "a.png"), "a cat\na dog").layers) == 2


def test_convert_refuses_to_overwrite(tiny_dir, tmp_path, capsys, torch):
  for to, out in (("hf", tmp_path / "hf"), ("flax", tmp_path / "flax"), ("original", tmp_path / "d.pth")):
    assert main(["convert", tiny_dir, str(out), "--to", to]) == 0
    marker = out / "README.md" if out.is_dir() else out
    before = marker.read_bytes()
    if out.is_dir():
      marker.write_text("my hand-edited card")
      before = marker.read_bytes()
    assert main(["convert", tiny_dir, str(out), "--to", to]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and "Traceback" not in err
    assert marker.read_bytes() == before  # nothing touched
    assert main(["convert", tiny_dir, str(out), "--to", to, "--overwrite"]) == 0
  # A .pth's sidecar counts too: a new decoder beside an old description would misdescribe it.
  (tmp_path / "only.pth.json").write_text("{}")
  assert main(["convert", tiny_dir, str(tmp_path / "only.pth"), "--to", "original"]) == 2


def test_eval_refuses_to_overwrite_and_bad_flags_before_loading(tmp_path, capsys, monkeypatch):
  import clipseg_jax

  monkeypatch.setattr(clipseg_jax, "load_model", lambda *a, **k: pytest.fail("the model loaded"))
  (tmp_path / "synthetic.json").write_text("{}")
  base = ["eval", "--checkpoint", "x", "--task", "synthetic", "--out", str(tmp_path)]
  for extra, match in (
    ([], "synthetic.json already exists"),
    (["--overwrite", "--threshold", "2"], "--threshold must be a probability"),
    (["--overwrite", "--threshold", "nan"], "--threshold must be a probability"),
    (["--overwrite", "--limit", "0"], "--limit must be at least 1"),
  ):
    assert main(base + extra) == 2
    assert match in capsys.readouterr().err


def flip_largest(folder):
  """Flip bytes in the middle of the largest file under `folder` (a damaged disk or download)."""
  f = max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  data = bytearray(f.read_bytes())
  for i in range(len(data) // 2, len(data) // 2 + 16):
    data[i] ^= 0xFF
  f.write_bytes(bytes(data))


def test_flax_checkpoints_carry_a_digest(tiny_model, tmp_path):
  out = tiny_model.save(tmp_path / "flax")
  marker = json.loads((out / "clipseg_jax.json").read_text())
  assert len(marker["params_sha256"]) == 64
  assert load_model(out).config == tiny_model.config
  flip_largest(out / "params")
  with pytest.raises(ValueError, match="corrupt|cannot read the params") as e:
    load_model(out)
  assert "\n" not in str(e.value)
  again = tiny_model.save(tmp_path / "flax2")
  data = max((p for p in (again / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  data.write_bytes(data.read_bytes()[:100])  # truncated
  with pytest.raises(ValueError, match="cannot read the params of|corrupt") as e:
    load_model(again)
  assert "\n" not in str(e.value) and len(str(e.value)) < 600
  (out / "clipseg_jax.json").write_text("{garbage")
  with pytest.raises(ValueError, match="clipseg_jax.json is not valid JSON"):
    load_model(out)


def test_digestless_files_with_non_finite_tensors_are_refused(tiny_dir, tmp_path):
  from safetensors.numpy import load_file, save_file

  out = shutil.copytree(tiny_dir, tmp_path / "hf")
  state = load_file(str(out / "model.safetensors"))
  key = sorted(k for k in state if k.startswith("decoder."))[0]
  state[key] = state[key].copy()
  state[key].flat[0] = np.nan
  save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})  # as transformers writes: no digest
  with pytest.raises(ValueError, match=f"{key}.*NaN or infinite"):
    load_model(out)


def test_original_format_round_trip(tmp_path, capsys, torch):
  """export_original records extract_layers in its sidecar; loading reads it; a file without the sidecar
  converts with --extract-layers."""
  model = load_model("embedded:synthetic")
  assert model.config.extract_layers != (3, 6, 9)  # the paper's default would not fit this CLIP
  path = tmp_path / "dec.pth"
  model.export_original(path)
  back = load_model(path)
  image = scene(64, 64)
  np.testing.assert_array_equal(back.predict(image, ["a red circle"]), model.predict(image, ["a red circle"]))
  path.with_name("dec.pth.json").unlink()
  args = ["convert", str(path), str(tmp_path / "hf"), "--to", "hf", "--clip", "embedded:synthetic-clip"]
  assert main(args) == 2
  assert "--extract-layers" in capsys.readouterr().err
  layers = [str(i) for i in model.config.extract_layers]
  assert main([*args, "--extract-layers", *layers]) == 0
  assert load_model(tmp_path / "hf").config.extract_layers == model.config.extract_layers


def no_space(*args, **kwargs):
  raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_is_one_line_and_leaves_no_temporary_files(tiny_dir, tmp_path, capsys, monkeypatch, torch):
  import safetensors.numpy
  from safetensors import SafetensorError

  def full(arrays, filename, metadata=None):
    with open(filename, "wb") as f:
      f.write(b"partial")
    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

  monkeypatch.setattr(safetensors.numpy, "save_file", full)
  out = tmp_path / "hf"
  assert main(["convert", tiny_dir, str(out), "--to", "hf"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "No space left on device" in err and str(out / "model.safetensors") in err
  assert not [p for p in out.iterdir() if p.name.startswith(".")]  # the temporary file is gone

  monkeypatch.setattr(torch, "save", no_space)
  assert main(["convert", tiny_dir, str(tmp_path / "d.pth"), "--to", "original"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "No space left on device" in err and "d.pth" in err
  assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


@pytest.mark.parametrize(
  "flags,match",
  [
    (["--port", "99999"], "--port must be between 0 and 65535"),
    (["--socket-timeout-s", "nan"], "socket_timeout_s must be positive and finite"),
    (["--read-timeout-s", "inf"], "read_timeout_s must be positive and finite"),
    (["--allow-origin", "http://a.example/path"], "--allow-origin must be one origin"),
  ],
)
def test_serve_flags_are_checked_before_the_model_loads(flags, match, capsys, monkeypatch):
  import clipseg_jax

  monkeypatch.setattr(clipseg_jax, "load_model", lambda *a, **k: pytest.fail("the model loaded"))
  assert main(["serve", *flags]) == 2
  assert match in capsys.readouterr().err


def test_serve_refuses_a_port_in_use_before_loading(capsys, monkeypatch):
  import socket

  import clipseg_jax

  monkeypatch.setattr(clipseg_jax, "load_model", lambda *a, **k: pytest.fail("the model loaded"))
  with socket.socket() as taken:
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    assert main(["serve", "--port", str(taken.getsockname()[1])]) == 2
  assert "cannot listen on 127.0.0.1" in capsys.readouterr().err


def test_segment_without_out_writes_beside_the_image_name(tiny_dir, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  Image.fromarray(scene()).save(tmp_path / "photo.png")
  assert main(["segment", "photo.png", "--prompt", "a cat", "--checkpoint", tiny_dir]) == 0
  assert (tmp_path / "photo_segments" / "photo_0_a-cat_mask.png").is_file()


@pytest.mark.parametrize(
  "override,match",
  [
    ("keep_checkpoints=0", "keep_checkpoints must be an integer of at least 1"),
    ("total_steps=0", "total_steps must be an integer of at least 1"),
    ("total_steps=-5", "total_steps must be"),
    ("checkpoint_every=0", "checkpoint_every must be"),
    ("log_every=0", "log_every must be"),
    ("batch_size=0", "batch_size must be"),
    ("optim.learning_rate=-0.1", "optim.learning_rate must be a finite number of at least 0"),
    ("optim.learning_rate=nan", "optim.learning_rate must be"),
    ("optim.compute_dtype=fp8", "optim.compute_dtype must be one of float32, bfloat16"),
  ],
)
def test_train_config_values_are_checked_when_loaded(override, match, tmp_path, capsys):
  with pytest.raises(ValueError, match=match):
    load_config("synthetic", [override])
  workdir = tmp_path / "w"
  assert main(["train", "--config", "synthetic", "--workdir", str(workdir), f"--config.{override}"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and override.split("=")[0] in err and not workdir.exists()  # before any setup


def test_recipe_files_that_do_not_load_name_the_file(tmp_path, capsys):
  syntax = tmp_path / "broken.py"
  syntax.write_text("def get_config(:\n  pass\n")
  plain = tmp_path / "plain.py"
  plain.write_text("def get_config():\n  return {'total_steps': 3}\n")
  raises = tmp_path / "raises.py"
  raises.write_text("def get_config():\n  raise KeyError('oops')\n")
  with pytest.raises(ValueError, match=r"broken.py: syntax error on line 1"):
    load_config(syntax)
  with pytest.raises(ValueError, match=r"plain.py: get_config\(\) must return an ml_collections.ConfigDict"):
    load_config(plain)
  with pytest.raises(ValueError, match=r"raises.py: get_config\(\) failed: KeyError"):
    load_config(raises)
  # A recipe argument get_config() refuses: its own message, not config_flags' "Error whilst parsing".
  with pytest.raises(
    ValueError, match=r"pascal5i.py: get_config\(\) failed: ValueError: PASCAL-5i fold must be 0-3, got 4"
  ):
    load_config("pascal5i:4")
  assert main(["train", "--config", str(syntax), "--workdir", str(tmp_path / "w")]) == 2
  assert "syntax error" in capsys.readouterr().err and not (tmp_path / "w").exists()


def test_checkpoint_disk_full_is_one_line_without_temporary_steps(tmp_path, monkeypatch, capsys):
  """Orbax fails a full disk in background threads, each logging its traceback; the Checkpointer raises
  it once, as one line, and removes the temporary step folder."""
  import logging

  import jax.numpy as jnp
  import orbax.checkpoint as ocp

  from clipseg_jax.train.checkpoints import Checkpointer

  def full(self, step, *args, **kwargs):
    (self.directory / f"{step}.orbax-checkpoint-tmp").mkdir()
    logging.getLogger("absl").error("thread raised", exc_info=ValueError("RESOURCE_EXHAUSTED"))
    raise ValueError('RESOURCE_EXHAUSTED: Error writing "w/0.0" in OCDBT database: No space left on device')

  monkeypatch.setattr(ocp.CheckpointManager, "save", full)
  ckpt = Checkpointer(tmp_path / "ck", asynchronous=False)
  state = type("State", (), {"params": {"w": jnp.ones(3)}})()
  monkeypatch.setattr("clipseg_jax.train.checkpoints.digest", lambda tree: None)
  with pytest.raises(OSError, match=r"cannot write a checkpoint in .*ck: no space left on the device") as e:
    ckpt.save(1, state, {})
  assert "\n" not in str(e.value) and not list((tmp_path / "ck").iterdir())


def test_unclear_inputs_get_one_line_naming_file_and_problem(tiny_dir, tiny_model, tmp_path, trained_run):
  from clipseg_jax import prompts

  # A truncated tokenizer.json.
  hf = shutil.copytree(tiny_dir, tmp_path / "hf")
  data = (hf / "tokenizer.json").read_bytes()
  (hf / "tokenizer.json").write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match=r"cannot read the tokenizer in .*hf \(tokenizer.json.*truncated or damaged"):
    load_model(hf)
  shutil.copy(tiny_dir + "/tokenizer.json", hf / "tokenizer.json")
  # A preprocessor size the model cannot take.
  pre = json.loads((hf / "preprocessor_config.json").read_text())
  pre["size"] = {"height": 50, "width": 50}
  (hf / "preprocessor_config.json").write_text(json.dumps(pre))
  with pytest.raises(ValueError, match=r"preprocessor_config.json: size 50 is not a multiple of the model's patch"):
    load_model(hf)

  # A Flax export whose Orbax metadata is garbage.
  flax = tiny_model.save(tmp_path / "flax")
  meta = next(p for p in (flax / "params").rglob("_METADATA"))
  meta.write_bytes(b"\x00garbage")
  with pytest.raises(ValueError, match=r"cannot read the params of .*flax") as e:
    load_model(flax)
  assert "\n" not in str(e.value)

  # Workdirs: no model/base.json, a corrupt config.json, a path that is a file.
  run = shutil.copytree(trained_run[0], tmp_path / "run")
  (run / "config.json").write_text("{not json")
  with pytest.raises(ValueError, match=r"run/config.json is not valid JSON"):
    load_model(run)
  (run / "model" / "base.json").unlink()
  with pytest.raises(FileNotFoundError, match=r"looks like a training workdir .* has no model/base.json"):
    load_model(run)
  (tmp_path / "notes").write_text("hello")
  with pytest.raises(ValueError, match=r"notes is a file, not a model"):
    load_model(tmp_path / "notes")

  # Visual prompts and predict arguments.
  image = scene(32, 32)
  for mask, match in ((np.full((32, 32), np.nan), "NaN"), (None, "support mask is None")):
    with pytest.raises(ValueError, match=match):
      prompts.visual_prompt(image, mask)
  for mode, match in (("crop_blur_highlight99999", "size must be in 1..2048"), (None, "mode must be a string")):
    with pytest.raises(ValueError, match=match):
      prompts.visual_prompt(image, np.ones((32, 32), bool), mode)
  with pytest.raises(ValueError, match="batch_size must be a positive integer"):
    tiny_model.predict(image, ["a cat"], batch_size=0)


def test_a_damaged_workdir_step_warns_in_a_few_lines(trained_run, tmp_path):
  """The fallback to an older step is one warning, not buried under TensorStore's tracebacks (its
  callbacks firing into Orbax's closed event loop printed ~150 lines per damaged step)."""
  import subprocess
  import sys

  run = shutil.copytree(trained_run[0], tmp_path / "run")
  step = max(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
  for f in (run / "checkpoints" / str(step) / "params").rglob("*"):
    if f.is_file() and ("/d/" in str(f) or f.name == "manifest.ocdbt"):
      f.write_bytes(f.read_bytes()[:10])  # truncated
  Image.fromarray(scene()).save(tmp_path / "a.png")
  args = ["segment", str(tmp_path / "a.png"), "--prompt", "x", "--checkpoint", str(run), "--out", str(tmp_path / "o")]
  out = subprocess.run([sys.executable, "-m", "clipseg_jax.cli.main", *args], capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-2000:]
  assert f"checkpoints/{step} does not restore" in out.stderr
  assert "Traceback" not in out.stderr and out.stderr.count("\n") < 10, out.stderr[:2000]


def test_tfds_variant_folder_chatter_is_dropped(caplog):
  from clipseg_jax.cli.main import quiet_noise

  quiet_noise()
  log = logging.getLogger("absl")
  log.warning("Variant folder %s has no dataset_info.json", "/tmp/x/1.0.0")
  log.warning("something a user should see")
  assert [r.getMessage() for r in caplog.records] == ["something a user should see"]


@pytest.fixture
def full_disk(tmp_path):
  """A 1 MB tmpfs (needs root and mount rights; skipped elsewhere): a disk that fills up mid-write."""
  import os
  import subprocess

  mount = tmp_path / "disk"
  mount.mkdir()
  if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)]).returncode:
    pytest.skip("mounting a tmpfs needs root")
  yield mount
  subprocess.run(["umount", str(mount)], check=False)


def test_a_real_full_disk_is_one_line_for_every_format(full_disk, capfd, torch):
  for to, out in (("flax", full_disk / "flax"), ("original", full_disk / "d.pth"), ("hf", full_disk / "hf")):
    assert main(["convert", "embedded:synthetic", str(out), "--to", to]) == 2
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if "Warning" not in line and "warn" not in line]
    assert len(lines) == 1 and "space" in lines[0] and "cannot write" in lines[0], err[-3000:]
    left = [p.name for p in full_disk.rglob("*") if p.is_file() or "tmp" in p.name]
    assert not [n for n in left if "tmp" in n or n.startswith(".")], left
    for p in list(full_disk.iterdir()):
      shutil.rmtree(p) if p.is_dir() else p.unlink()


def test_a_full_disk_saving_the_tokenizer_is_an_os_error(full_disk):
  """The trainer saves its tokenizer into WORKDIR/model; the Rust tokenizer reported a full disk as a bare
  Exception (a traceback from `clipseg-jax train`)."""
  from clipseg_jax.tokenizer import load_tokenizer

  with pytest.raises(OSError, match=r"cannot write the tokenizer to .*tok: No space left on device"):
    load_tokenizer().save_pretrained(str(full_disk / "tok"))
  assert not list((full_disk / "tok").iterdir())  # no half-written tokenizer.json
