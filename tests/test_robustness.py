"""Fault injection: commands never overwrite or silently skip, inputs are never silently mangled, and
every load error names the file and what is wrong with it."""

import json
import os
import shutil
import warnings

import numpy as np
import pytest
from PIL import Image

from clipseg_jax import load_model
from clipseg_jax.cli import segment
from clipseg_jax.cli.main import main
from clipseg_jax.preprocess import load_image, to_rgb
from clipseg_jax.tokenizer import PromptTruncatedWarning, default_tokenizer, tokenize
from clipseg_jax.weights import io


def save_random(path, h, w, seed):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.random.RandomState(seed).randint(0, 256, (h, w, 3), np.uint8)).save(path)


# ---- segment: outputs never collide, never overwrite, batch size checked ------------------------


def test_output_names_tell_duplicate_stems_apart(tmp_path):
  labels = ["a cat"]
  x_jpg, x_png = tmp_path / "x.jpg", tmp_path / "x.png"
  a_x, b_x = tmp_path / "a" / "x.jpg", tmp_path / "b" / "x.jpg"
  assert segment.output_names([x_jpg, tmp_path / "y.jpg"], labels) == ["x", "y"]  # unique stems kept
  assert segment.output_names([x_jpg, x_png], labels) == ["x-jpg", "x-png"]
  assert segment.output_names([a_x, b_x], labels) == ["a_x-jpg", "b_x-jpg"]
  # one image's per-prompt file could be another's overlay: `a_0_cat_overlay.png`
  names = segment.output_names([tmp_path / "a.jpg", tmp_path / "a_0_cat.png"], ["cat"])
  files = [set(segment.output_files(n, ["cat"], True)) for n in names]
  assert not files[0] & files[1]
  # full names that still clash are numbered, deterministically
  tricky = [tmp_path / "a_b" / "x.jpg", tmp_path / "a" / "b_x.jpg"]
  assert segment.output_names(tricky, labels) == segment.output_names(tricky, labels)
  assert len(set(segment.output_names(tricky, labels))) == 2


def test_segment_duplicate_stems_all_written_and_rerun_refused(tiny_dir, tmp_path, capsys):
  images = tmp_path / "in"
  sizes = {"x.jpg": (30, 40), "x.png": (32, 44), "a/x.jpg": (34, 48), "b/x.jpg": (36, 52)}
  for seed, (name, (h, w)) in enumerate(sizes.items()):
    save_random(images / name, h, w, seed)
  out = tmp_path / "out"
  argv = [
    "segment",
    *(str(images / n) for n in sizes),
    "--prompt",
    "a cat",
    "--checkpoint",
    tiny_dir,
    "--out",
    str(out),
  ]
  assert main(argv) == 0
  assert "for 4 image(s)" in capsys.readouterr().out
  overlays = sorted(p.name for p in out.glob("*_overlay.png") if "_0_" not in p.name)
  assert overlays == ["a_x-jpg_overlay.png", "b_x-jpg_overlay.png", "in_x-jpg_overlay.png", "x-png_overlay.png"]
  want = {"in_x-jpg": "x.jpg", "x-png": "x.png", "a_x-jpg": "a/x.jpg", "b_x-jpg": "b/x.jpg"}
  for stem, name in want.items():  # each output is its own image's (sizes differ)
    h, w = sizes[name]
    assert Image.open(out / f"{stem}_overlay.png").size == (2 * w + 4, h)  # the image beside its overlay
    assert Image.open(out / f"{stem}_0_a-cat_mask.png").size == (w, h)

  # A rerun into the same --out refuses before writing anything, naming the file.
  before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()}
  assert main(argv) == 2
  err = capsys.readouterr().err
  assert "already exists" in err and "--overwrite" in err and str(out) in err and len(err.strip().splitlines()) == 1
  assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()} == before


def test_segment_overwrite_flag_lifts_the_refusal(tmp_path, monkeypatch, capsys):
  """Checked up to loading the model (not run again: that is the slow part)."""
  import clipseg_jax

  save_random(tmp_path / "a.png", 8, 8, 0)
  (tmp_path / "o").mkdir()
  (tmp_path / "o" / "a_overlay.png").write_bytes(b"earlier")
  argv = ["segment", str(tmp_path / "a.png"), "--prompt", "x", "--out", str(tmp_path / "o")]
  assert main(argv) == 2
  assert f"{tmp_path / 'o' / 'a_overlay.png'} already exists" in capsys.readouterr().err

  def reached(*args, **kwargs):
    raise RuntimeError("reached load_model")

  monkeypatch.setattr(clipseg_jax, "load_model", reached)
  with pytest.raises(RuntimeError, match="reached load_model"):
    main([*argv, "--overwrite"])


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_segment_batch_size_must_be_positive(tmp_path, value, capsys):
  save_random(tmp_path / "a.png", 8, 8, 0)
  with pytest.raises(SystemExit) as e:
    main(["segment", str(tmp_path / "a.png"), "--prompt", "x", "--out", str(tmp_path / "o"), "--batch-size", value])
  assert e.value.code == 2 and "--batch-size" in capsys.readouterr().err
  assert not (tmp_path / "o").exists()


# ---- 16-bit images are scaled by their depth, not clipped -----------------------------------------


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_images_are_scaled(tmp_path, suffix):
  arr = np.full((6, 7), 32768, np.uint16)
  arr[0, :3] = [0, 65535, 257]
  Image.fromarray(arr).save(tmp_path / f"grey16{suffix}")
  with Image.open(tmp_path / f"grey16{suffix}") as im:
    assert im.mode.startswith("I")  # what PIL gives: I;16 (or I)
  got = np.asarray(load_image(tmp_path / f"grey16{suffix}"))
  assert got.shape == (6, 7, 3) and got.dtype == np.uint8
  assert got[1:, :, 0].tolist() == [[128] * 7] * 5  # was 255: PIL's conversion clips
  assert got[0, :3, 0].tolist() == [0, 255, 1]
  assert (got == got[..., :1]).all()


def test_16_bit_pil_modes_and_arrays():
  arr = np.full((4, 5), 32768, np.uint16)
  assert np.asarray(to_rgb(Image.fromarray(arr)))[0, 0].tolist() == [128] * 3  # I;16
  assert np.asarray(to_rgb(Image.fromarray(arr).convert("I")))[0, 0].tolist() == [128] * 3  # I (32-bit)
  assert np.asarray(to_rgb(arr))[0, 0].tolist() == [128] * 3  # uint16 arrays, HxW and HxWx3
  assert np.asarray(to_rgb(np.full((4, 5, 3), 65535, np.uint16)))[0, 0].tolist() == [255] * 3
  assert np.asarray(to_rgb(np.full((4, 5, 3), 200, np.uint8)))[0, 0].tolist() == [200] * 3  # 8-bit unchanged


# ---- long prompts warn --------------------------------------------------------------------------


def test_long_prompt_warns_once_naming_it():
  tok = default_tokenizer()
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    tokenize(tok, ["word " * 75, "a cat"])  # exactly 77 tokens with start and end: no warning
  long = "a very long prompt " + "word " * 100
  with pytest.warns(PromptTruncatedWarning) as record:
    ids, _ = tokenize(tok, ["a cat", long, long + "more"])
  assert len(record) == 1
  message = str(record[0].message)
  assert "'a very long prompt word" in message and "106 tokens" in message and "77" in message
  assert "1 more" in message and len(message) < 200
  assert ids.shape == (3, 77)


def test_long_prompt_warns_through_the_model(tiny_model):
  with pytest.warns(UserWarning, match="tokens; truncated to 77"):
    tiny_model.encode_text(["word " * 80])


# ---- load errors name the file --------------------------------------------------------------------


@pytest.fixture
def model_copy(tiny_dir, tmp_path):
  d = tmp_path / "model"
  shutil.copytree(tiny_dir, d)
  return d


def edit_config(directory, edit):
  path = directory / "config.json"
  config = json.loads(path.read_text())
  edit(config)
  path.write_text(json.dumps(config))


BAD_CONFIGS = {
  "string size": lambda c: c["vision_config"].update(hidden_size="32"),
  "list size": lambda c: c.update(reduce_dim=[16]),
  "null heads": lambda c: c["text_config"].update(num_attention_heads=None),
  "zero heads": lambda c: c["vision_config"].update(num_attention_heads=0),
  "zero decoder heads": lambda c: c.update(decoder_num_attention_heads=0),
  "zero patch": lambda c: c["vision_config"].update(patch_size=0),
  "string patch": lambda c: c["vision_config"].update(patch_size="16"),
  "int extract_layers": lambda c: c.update(extract_layers=3),
  "string layer": lambda c: c.update(extract_layers=["1", "2"]),
  "string bool": lambda c: c.update(use_complex_transposed_convolution="false"),
  "list vision_config": lambda c: c.update(vision_config=[1]),
}


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_bad_config_names_the_file_and_field(model_copy, case):
  edit_config(model_copy, BAD_CONFIGS[case])
  with pytest.raises(ValueError, match="config.json") as e:
    load_model(model_copy)
  assert str(model_copy / "config.json") in str(e.value)
  assert any(
    f in str(e.value)
    for f in ("hidden_size", "reduce_dim", "heads", "patch_size", "extract_layers", "use_complex", "vision_config")
  )


def test_invalid_json_config_names_the_file(model_copy):
  (model_copy / "config.json").write_text('{"model_type": "clipseg", ')
  with pytest.raises(ValueError, match="config.json is not valid JSON"):
    load_model(model_copy)


def test_truncated_safetensors_names_the_file(model_copy):
  weights = model_copy / "model.safetensors"
  data = weights.read_bytes()
  weights.write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match="model.safetensors.*truncated"):
    load_model(model_copy)
  weights.write_bytes(data[:5])
  with pytest.raises(ValueError, match="model.safetensors"):
    io.read_state(weights)


def test_bad_pth_names_the_file(tmp_path, torch):
  bad = tmp_path / "decoder.pth"
  bad.write_bytes(b"this is not a pickle")
  with pytest.raises(ValueError, match=r"decoder.pth as a PyTorch state dict") as e:
    io.read_state(bad)
  assert "weights_only` set to `False`" not in str(e.value)  # no advice to load unsafely
  bad.write_bytes(b"")
  with pytest.raises(ValueError, match="decoder.pth"):
    io.read_state(bad)
  torch.save({"blocks.0.weight": 1.5}, bad)
  with pytest.raises(ValueError, match="decoder.pth does not hold a state dict.*float"):
    io.read_state(bad)
  torch.save([torch.zeros(2)], bad)
  with pytest.raises(ValueError, match="decoder.pth does not hold a state dict"):
    io.read_state(bad)


# ---- exports carry a digest checked at load ------------------------------------------------------


def test_flipped_byte_in_export_is_refused(model_copy):
  from safetensors import safe_open

  weights = model_copy / "model.safetensors"
  with safe_open(str(weights), "numpy") as f:
    meta = f.metadata()
  assert meta["format"] == "pt" and len(meta[io.DIGEST_KEY]) == 64
  assert os.stat(weights).st_mode & 0o777 == 0o644
  data = bytearray(weights.read_bytes())
  data[-10] ^= 0x01  # inside the last tensor: the file still parses
  weights.write_bytes(bytes(data))
  with pytest.raises(ValueError, match="model.safetensors is corrupt"):
    load_model(model_copy)


def test_files_without_digest_load_as_before(tmp_path):
  from safetensors.numpy import save_file

  save_file({"w": np.arange(4, dtype=np.float32)}, str(tmp_path / "plain.safetensors"), metadata={"format": "pt"})
  assert io.read_state(tmp_path / "plain.safetensors")["w"].tolist() == [0, 1, 2, 3]


def test_transformers_loads_untouched_export(tiny_dir, tiny_model, torch):
  from transformers import CLIPSegForImageSegmentation

  hf = CLIPSegForImageSegmentation.from_pretrained(tiny_dir)
  state = io.read_state(tiny_dir)
  assert set(state) <= set(hf.state_dict())
  key = "decoder.transposed_convolution.0.weight"
  assert np.array_equal(hf.state_dict()[key].numpy(), state[key])


def test_pth_export_sidecar(tmp_path, torch):
  path = tmp_path / "dec.pth"
  io.write_torch({"a": np.arange(6, dtype=np.float32)}, path)
  sidecar = tmp_path / "dec.pth.sha256"
  assert sidecar.read_text().split() == [io.file_digest(path), "dec.pth"]
  assert os.stat(path).st_mode & 0o777 == 0o644 == os.stat(sidecar).st_mode & 0o777
  assert io.read_state(path)["a"].tolist() == list(range(6))
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0x01
  path.write_bytes(bytes(data))
  with pytest.raises(ValueError, match="dec.pth is corrupt or was replaced"):
    io.read_state(path)
  torch.save({"a": torch.zeros(2)}, path)  # replaced by hand: the sidecar is stale
  with pytest.raises(ValueError, match="delete dec.pth.sha256"):
    io.read_state(path)
  sidecar.unlink()
  assert io.read_state(path)["a"].tolist() == [0, 0]
