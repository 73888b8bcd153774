"""`clipseg-jax segment` and `convert` on local random-weight checkpoints."""

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import max_rel_err
from PIL import Image

from clipseg_jax import load_model
from clipseg_jax.cli.main import main


def test_segment_writes_masks_and_overlays(tiny_dir, tmp_path):
  Image.fromarray(np.random.RandomState(0).randint(0, 256, (75, 120, 3), np.uint8)).save(tmp_path / "a.jpg")
  Image.fromarray(np.random.RandomState(1).randint(0, 256, (50, 40, 3), np.uint8)).save(tmp_path / "b.png")
  out = tmp_path / "out"
  rc = main(
    [
      "segment",
      str(tmp_path / "a.jpg"),
      str(tmp_path / "*.png"),
      "--prompt",
      "a red circle",
      "--prompt",
      "the sky",
      "--checkpoint",
      tiny_dir,
      "--out",
      str(out),
    ]
  )
  assert rc == 0
  for stem, size in (("a", (120, 75)), ("b", (40, 50))):
    for i, slug in enumerate(["a-red-circle", "the-sky"]):
      mask = Image.open(out / f"{stem}_{i}_{slug}_mask.png")
      overlay = Image.open(out / f"{stem}_{i}_{slug}_overlay.png")
      assert mask.size == size and overlay.size == (2 * size[0] + 4, size[1])  # the image, then its overlay
      assert mask.mode == "L" and overlay.mode == "RGB"
    assert Image.open(out / f"{stem}_overlay.png").size == (2 * size[0] + 4, size[1])


def test_segment_threshold_gives_binary_masks(tiny_dir, tmp_path):
  Image.fromarray(np.random.RandomState(0).randint(0, 256, (64, 64, 3), np.uint8)).save(tmp_path / "a.png")
  assert (
    main(
      [
        "segment",
        str(tmp_path / "a.png"),
        "--prompt",
        "x",
        "--threshold",
        "0.5",
        "--checkpoint",
        tiny_dir,
        "--out",
        str(tmp_path / "o"),
      ]
    )
    == 0
  )
  assert set(np.unique(np.asarray(Image.open(tmp_path / "o" / "a_0_x_mask.png")))) <= {0, 255}


def test_segment_bad_inputs(tiny_dir, tmp_path, capsys):
  (tmp_path / "broken.jpg").write_bytes(b"not an image")
  args = ["--prompt", "a cat", "--checkpoint", tiny_dir, "--out", str(tmp_path / "o")]
  assert main(["segment", str(tmp_path / "broken.jpg"), *args]) == 2
  assert "cannot read" in capsys.readouterr().err
  assert main(["segment", str(tmp_path / "missing.jpg"), *args]) == 2
  assert "image not found" in capsys.readouterr().err
  assert main(["segment", str(tmp_path / "broken.jpg"), "--checkpoint", tiny_dir, "--out", str(tmp_path / "o")]) == 2
  assert "at least one --prompt" in capsys.readouterr().err
  Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
  assert main(["segment", str(tmp_path / "ok.png"), *args, "--threshold", "2"]) == 2
  assert "threshold must be a probability" in capsys.readouterr().err


@pytest.mark.slow  # compares against predict image by image
def test_segment_directory_logits_and_skipped_images(tiny_dir, tiny_model, tmp_path, capsys):
  """A directory of images, one unreadable: the rest are written, the bad one named, exit status 2."""
  images = tmp_path / "imgs"
  images.mkdir()
  arrays = [np.random.RandomState(s).randint(0, 256, (40 + s, 50, 3), np.uint8) for s in range(3)]
  for s, a in enumerate(arrays):
    Image.fromarray(a).save(images / f"im{s}.png")
  (images / "zz_broken.jpg").write_bytes(b"")
  out = tmp_path / "o"
  rc = main(
    [
      "segment",
      str(images),
      "--prompt",
      "a cat",
      "--prompt",
      "a dog",
      "--logits",
      "--batch-size",
      "2",
      "--checkpoint",
      tiny_dir,
      "--out",
      str(out),
    ]
  )
  assert rc == 2 and "1 of 4 image(s) could not be read" in capsys.readouterr().err
  for s, a in enumerate(arrays):
    saved = np.load(out / f"im{s}_logits.npz")
    assert list(saved["prompts"]) == ["a cat", "a dog"]
    want = tiny_model.predict_iter([a], tiny_model.encode_text(["a cat", "a dog"]))
    assert max_rel_err(saved["logits"], next(want)["logits"]) < 1e-5  # a batch of 2 images vs 1
    assert Image.open(out / f"im{s}_1_a-dog_mask.png").size == (50, 40 + s)


def test_convert_all_formats(tiny_checkpoint, tiny_model, tmp_path, torch):
  from transformers import CLIPSegForImageSegmentation

  src = tiny_checkpoint[0]
  assert main(["convert", src, str(tmp_path / "hf"), "--to", "hf"]) == 0
  assert main(["convert", src, str(tmp_path / "flax"), "--to", "flax"]) == 0
  assert main(["convert", str(tmp_path / "flax"), str(tmp_path / "dec.pth"), "--to", "original"]) == 0
  ref = tiny_checkpoint[1].state_dict()
  hf = CLIPSegForImageSegmentation.from_pretrained(tmp_path / "hf").state_dict()
  assert all(torch.equal(hf[k], v) for k, v in ref.items())
  dec = torch.load(tmp_path / "dec.pth", weights_only=True)
  assert torch.equal(dec["blocks.0.self_attn.in_proj_weight"][:16], ref["decoder.layers.0.self_attn.q_proj.weight"])
  assert load_model(tmp_path / "flax").config == tiny_model.config


def test_console_script():
  out = subprocess.run([sys.executable, "-m", "clipseg_jax.cli.main", "--help"], capture_output=True, text=True)
  assert out.returncode == 0 and "segment" in out.stdout and "convert" in out.stdout


def test_library_chatter_is_quiet():
  """TensorFlow's oneDNN banner (printed before its logging starts), TFDS' variant-folder notes and JAX's
  TPU-backend notes say nothing to a user of the CLI: none reaches stderr; other warnings still do."""
  code = (
    "import logging, sys; from clipseg_jax.cli.main import quiet_noise; quiet_noise(); "
    "logging.basicConfig(); import tensorflow as tf; tf.constant(1.0) + 1.0; "
    "logging.getLogger('absl').warning('Variant folder /x/1.0.0 has no dataset_info.json'); "
    "logging.getLogger('absl').warning('Failed to load %s from files: %s', 'dataset x', 'not found'); "
    "logging.getLogger('jax._src.xla_bridge').warning(\"Unable to initialize backend 'tpu': no libtpu\"); "
    "logging.getLogger('jax._src.xla_bridge').warning('something else')"
  )
  env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
  err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env).stderr
  assert "oneDNN" not in err and "Variant folder" not in err and "'tpu'" not in err and "Failed to load" not in err
  assert "something else" in err


def test_errors_are_one_line_unless_debug(tiny_dir, tmp_path, capsys, monkeypatch):
  """A user error is one line naming --debug; --debug shows the traceback; a missing optional
  dependency names the extra that installs it."""
  from clipseg_jax.cli import main as cli

  Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
  args = ["segment", str(tmp_path / "ok.png"), "--prompt", "x", "--checkpoint", tiny_dir, "--threshold", "2"]
  assert main(args + ["--out", str(tmp_path / "o")]) == 2
  err = capsys.readouterr().err
  assert "threshold must be a probability" in err and "--debug" in err and "Traceback" not in err
  with pytest.raises(ValueError, match="threshold must be a probability"):
    main(["--debug", *args, "--out", str(tmp_path / "o2")])

  def needs_grain(args):
    raise ModuleNotFoundError("No module named 'grain'", name="grain")

  monkeypatch.setattr(cli.COMMANDS["data"], "run", needs_grain)
  assert main(["data", "build", "synthetic"]) == 2
  err = capsys.readouterr().err
  assert "pip install 'clipseg-jax[data] @ git+https://github.com/" in err  # installable today, not PyPI's form
  with pytest.raises(ModuleNotFoundError):
    main(["data", "build", "synthetic", "--debug"])
