"""Deployable artifacts (clipseg_jax.artifact, `convert --to stablehlo|onnx`): each is run where our
package is not (a fresh Python process importing only jax or onnxruntime), fed pixels prepared from its
spec.json alone, and must give `predict`'s logits and probabilities."""

import json
import shlex
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from clipseg_jax import artifact, preprocess
from clipseg_jax.cli.main import main

PROMPTS = ["a cat", "a dog on a sofa"]
# Runs in a fresh interpreter: jax and numpy (and `tokenizers` for prompts given as text) only.
RUNNER = textwrap.dedent(
  """
  import json, sys
  import jax, numpy as np
  folder, inputs, output = sys.argv[1:]
  spec = json.load(open(f"{folder}/spec.json"))
  call = jax.export.deserialize(bytearray(open(f"{folder}/{spec['file']}", "rb").read())).call
  x = dict(np.load(inputs))
  args = [x["pixel_values"]]
  if spec["prompts"] is None:  # tokenise as a deployment would: the tokenizer file beside the model
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(f"{folder}/tokenizer.json")
    ids = [tok.encode(t).ids for t in x["texts"]]
    n = max(map(len, ids))
    args.append(np.array([i + [i[-1]] * (n - len(i)) for i in ids], np.int32))
    args.append(np.array([[1] * len(i) + [0] * (n - len(i)) for i in ids], np.int32))
  np.save(output, np.asarray(call(*args)))
  assert not any(m.startswith("clipseg_jax") for m in sys.modules), "the artifact needs no clipseg_jax"
  """
)


def images() -> list[np.ndarray]:
  rng = np.random.RandomState(0)
  return [rng.randint(0, 256, (50, 70, 3), np.uint8), rng.randint(0, 256, (80, 40, 3), np.uint8)]


def spec_pixels(spec: dict, image: np.ndarray) -> np.ndarray:
  """The model's input as spec.json describes it: RGB, resized bilinearly to a square, (x/255 - mean) / std."""
  pre, size = spec["inputs"][0]["preprocessing"], spec["image_size"]
  x = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR), np.float32) * np.float32(pre["scale"])
  return (x - np.float32(pre["mean"])) / np.float32(pre["std"])


def expected(model, prompts) -> tuple[list[np.ndarray], np.ndarray]:
  """`predict`'s logits [P, S, S] per image, and its probabilities [n, P, H, W] at the images' sizes."""
  cond = model.encode_prompts(prompts)
  logits = [out["logits"] for out in model.predict_iter(images(), cond)]
  return logits, model.predict(images()[:1], prompts)[0]


def run_fresh(folder, tmp_path, pixels, texts=None) -> np.ndarray:
  inputs = tmp_path / "inputs.npz"
  np.savez(inputs, pixel_values=pixels, **({"texts": np.array(texts)} if texts else {}))
  script = tmp_path / "runner.py"
  script.write_text(RUNNER)
  out = tmp_path / "out.npy"
  done = subprocess.run(
    [sys.executable, str(script), str(folder), str(inputs), str(out)], capture_output=True, text=True, timeout=300
  )
  assert done.returncode == 0, done.stderr[-3000:]
  return np.load(out)


@pytest.mark.parametrize("baked", [True, False], ids=["baked-prompts", "token-inputs"])
def test_stablehlo_in_a_fresh_process_matches_predict(tiny_model, tmp_path, baked):
  folder = artifact.export_stablehlo(tiny_model, tmp_path / "hlo", prompts=PROMPTS if baked else None)
  spec = json.loads((folder / "spec.json").read_text())
  assert spec["platforms"] == ["cpu", "cuda"] and spec["prompts"] == (PROMPTS if baked else None)
  size = tiny_model.image_size  # what predict feeds the model
  assert spec["inputs"][0]["shape"] == ["batch", size, size, 3] and spec["outputs"][0]["shape"][1] == (
    2 if baked else "prompts"
  )
  assert spec["bytes"] == (folder / "model.jax_export").stat().st_size
  assert (folder / "tokenizer.json").exists() != baked
  pixels = np.stack([spec_pixels(spec, im) for im in images()])
  np.testing.assert_allclose(pixels, preprocess.batch_pixels(images(), size), atol=1e-6)  # the spec is right
  logits = run_fresh(folder, tmp_path, pixels, None if baked else PROMPTS)  # batch 2: any batch runs
  want, probs = expected(tiny_model, PROMPTS)
  assert logits.shape == (2, 2, size, size)
  np.testing.assert_allclose(logits, np.stack(want), atol=1e-5, rtol=1e-5)
  mine = preprocess.resize_map(1 / (1 + np.exp(-logits[0].astype(np.float64))), 50, 70)
  np.testing.assert_allclose(mine, probs, atol=1e-5)


def test_stablehlo_other_sizes_and_batches(tiny_model, tmp_path, monkeypatch):
  folder = artifact.export_stablehlo(
    tiny_model, tmp_path / "hlo", prompts=PROMPTS[:1], image_size=96, platforms=["cpu"]
  )
  call, spec = artifact.load_stablehlo(folder)
  assert spec["image_size"] == 96 and spec["platforms"] == ["cpu"]
  x = preprocess.batch_pixels(images() + images()[:1], 96)
  np.testing.assert_allclose(
    np.asarray(call(x)),
    np.asarray(tiny_model.decode(tiny_model.encode_images(x), tiny_model.encode_prompts(PROMPTS[:1]))),
    atol=1e-5,
  )
  with pytest.raises(ValueError, match="divisible by the patch size"):
    artifact.export_stablehlo(tiny_model, tmp_path / "bad", image_size=90)
  with pytest.raises(ValueError, match="unknown platform"):
    artifact.export_stablehlo(tiny_model, tmp_path / "bad", platforms=["gpu"])
  import jax.export

  monkeypatch.setattr(jax.export, "export", lambda *a, **k: pytest.fail("exported before refusing the folder"))
  with pytest.raises(FileExistsError, match="already exists"):  # refused before the export's work
    artifact.export_stablehlo(tiny_model, folder)
  with pytest.raises(FileExistsError, match="already exists"):
    artifact.export_onnx(tiny_model, folder)
  with pytest.raises(ValueError, match="not an artifact folder"):
    artifact.load_stablehlo(tmp_path)


def test_convert_cli(tiny_dir, tmp_path, capsys):
  out = tmp_path / "seg-hlo"
  assert main(["convert", tiny_dir, str(out), "--to", "stablehlo", "--prompt", "a cat", "--platforms", "cpu"]) == 0
  assert "model.jax_export" in capsys.readouterr().out
  spec = json.loads((out / "spec.json").read_text())
  assert spec["prompts"] == ["a cat"] and spec["inputs"][0]["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
  assert spec["inputs"][0]["preprocessing"]["std"] == [0.229, 0.224, 0.225]
  assert main(["convert", tiny_dir, str(out), "--to", "stablehlo"]) == 2
  assert "already exists" in capsys.readouterr().err
  (out / "keep.txt").write_text("mine")
  assert main(["convert", tiny_dir, str(out), "--to", "stablehlo", "--platforms", "cpu", "--overwrite"]) == 0
  assert (out / "keep.txt").read_text() == "mine" and json.loads((out / "spec.json").read_text())["prompts"] is None
  assert main(["convert", tiny_dir, str(tmp_path / "hf"), "--to", "hf", "--prompt", "a cat"]) == 2
  assert "--prompt: only for --to stablehlo or onnx" in capsys.readouterr().err


def onnx_runtime():
  pytest.importorskip("torch", reason="the ONNX export goes through PyTorch (the 'onnx' extra)")
  pytest.importorskip("onnxscript", reason="torch.onnx's exporter needs onnxscript (the 'onnx' extra)")
  return pytest.importorskip("onnxruntime", reason="the ONNX check runs onnxruntime (the 'onnx' extra)")


def run_onnx(ort, folder, feed) -> np.ndarray:
  session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
  return session.run(["logits"], feed)[0]


def test_onnx_baked_prompts_match_predict(tiny_model, tmp_path):
  ort = onnx_runtime()
  folder = artifact.export_onnx(tiny_model, tmp_path / "onnx", prompts=PROMPTS)
  spec = json.loads((folder / "spec.json").read_text())
  size = tiny_model.image_size
  assert spec["format"] == "onnx" and spec["inputs"][0]["shape"] == ["batch", 3, size, size]
  pixels = np.stack([spec_pixels(spec, im) for im in images()]).transpose(0, 3, 1, 2)  # NCHW
  logits = run_onnx(ort, folder, {"pixel_values": pixels})
  want, _ = expected(tiny_model, PROMPTS)
  np.testing.assert_allclose(logits, np.stack(want), atol=1e-5, rtol=1e-5)
  one = run_onnx(ort, folder, {"pixel_values": pixels[1:]})  # another batch size
  np.testing.assert_allclose(one[0], want[1], atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_onnx_token_inputs_match_predict(tiny_model, tmp_path):
  ort = onnx_runtime()
  folder = artifact.export_onnx(tiny_model, tmp_path / "onnx")
  spec = json.loads((folder / "spec.json").read_text())
  assert [i["name"] for i in spec["inputs"]] == ["pixel_values", "input_ids", "attention_mask"]
  pixels = np.stack([spec_pixels(spec, im) for im in images()]).transpose(0, 3, 1, 2)
  ids, mask = artifact.tokens(tiny_model, PROMPTS)
  feed = {"pixel_values": pixels, "input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64)}
  want, _ = expected(tiny_model, PROMPTS)
  np.testing.assert_allclose(run_onnx(ort, folder, feed), np.stack(want), atol=1e-5, rtol=1e-5)


# The commands of the README's artifact section, run exactly as written there.
README_COMMANDS = [
  'clipseg-jax convert embedded:synthetic seg/ --to stablehlo --prompt "a red circle" --prompt "a blue square"',
  'clipseg-jax convert embedded:synthetic seg-onnx/ --to onnx --prompt "a red circle"',
]


@pytest.mark.parametrize(
  "command", [README_COMMANDS[0], pytest.param(README_COMMANDS[1], marks=pytest.mark.slow)], ids=["stablehlo", "onnx"]
)
def test_readme_artifact_commands(command, tmp_path, monkeypatch):
  if "onnx" in command:
    onnx_runtime()
  monkeypatch.chdir(tmp_path)
  assert main(shlex.split(command)[1:]) == 0
  folder = tmp_path / shlex.split(command)[3]
  spec = json.loads((folder / "spec.json").read_text())
  assert spec["prompts"] == shlex.split(command)[7::2]
  assert spec["bytes"] == (folder / spec["file"]).stat().st_size
