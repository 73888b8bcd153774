"""The model manifest (`clipseg_jax.weights.manifest`): every writer records it, every format reads it (or
derives it from where older releases kept its facts), and `ClipSeg` applies what it says. The models the
December 2026 release wrote (tests/fixtures/release_2026_12, see its README.txt) load and predict the
logits that release predicted."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from clipseg_jax import ClipSeg, load_model, prompts
from clipseg_jax.config import tiny_config
from clipseg_jax.evaluation.predictor import NoPromptPredictor, predictor_for
from clipseg_jax.models.clipseg import init_params
from clipseg_jax.weights import backbone, hf, io
from clipseg_jax.weights.manifest import MANIFEST_FILE, VERSION, ManifestError

RELEASE = Path(__file__).parent / "fixtures" / "release_2026_12"
FORMATS = {"hf": "hf", "workdir": "workdir", "flax": "flax", "original": "original/tiny.pth"}
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_release_models_predict_the_recorded_logits(name, monkeypatch):
  recorded = np.load(RELEASE / "logits.npz")
  monkeypatch.chdir(RELEASE)  # the fixtures name their CLIP by the relative path "clip"
  model = load_model(FORMATS[name])
  assert model.image_size == int(recorded["image_size"]) == 48  # the recorded input size, not 352
  out = next(model.predict_iter([recorded["query"]], model.encode_prompts(list(recorded["prompts"]))))
  np.testing.assert_allclose(out["logits"], recorded[name], atol=1e-5, rtol=0)
  assert np.abs(recorded[name][0] - recorded[name][1]).max() > 1e-3  # the two prompts are told apart


def test_release_workdir_manifest_is_derived_from_its_run(monkeypatch):
  """The release's workdir has no manifest: its run config and base.json give one."""
  monkeypatch.chdir(RELEASE)
  m = load_model("workdir").manifest
  run = json.loads((RELEASE / "workdir" / "config.json").read_text())
  base = json.loads((RELEASE / "workdir" / "model" / "base.json").read_text())
  assert (m.image_size, m.prompt_mode, m.trained_prompts, m.withhold_prompt) == (
    48,
    "blur_highlight",
    ("text", "visual"),
    False,
  )
  assert run["data"]["pcplus"]["prompt_mode"] == "blur_highlight"
  assert (m.clip, m.clip_sha256, m.clip_finetuned) == ("clip", base["clip_sha256"], False)
  assert m.provenance["training"]["steps"] == 2 and m.provenance["training"]["dataset"] == "synthetic/tiny"
  # The other formats of that release recorded no prompt mode: the released models' default.
  assert load_model("flax").manifest.prompt_mode == "crop_blur_highlight"
  assert not any(k in load_model("hf").config.extra for k in ("trained_prompts", "withhold_prompt"))


def test_loading_imports_no_training_code():
  """`clipseg_jax.load` (and loading a workdir with it) imports nothing of `clipseg_jax.train`."""
  code = (
    "import sys, clipseg_jax.load as L; L.load_model('workdir'); "
    "print(sorted(m for m in sys.modules if m.startswith('clipseg_jax.train')))"
  )
  out = subprocess.run(
    [sys.executable, "-c", code], cwd=RELEASE, capture_output=True, text=True, timeout=300, check=True
  ).stdout
  assert out.strip().splitlines()[-1] == "[]"


@pytest.fixture(scope="module")
def recorded_model():
  """A tiny model whose manifest says something other than the defaults."""
  config = tiny_config()
  params = jax.jit(lambda key: init_params(config, key))(jax.random.PRNGKey(3))
  model = ClipSeg(config, params, image_size=32)
  model.manifest = model.manifest.replace(
    prompt_mode="blur_highlight",
    trained_prompts=("text",),
    clip="org/some-clip",
    provenance={"license": "mit", "training": {"dataset": "synthetic", "steps": 7}},
  )
  return model


def write_clip(model, out: Path) -> Path:
  """The model's CLIP towers as an HF `CLIPModel` directory (what an original decoder file loads with)."""
  d = model.config.to_dict()
  state = {k.removeprefix("clip."): v for k, v in hf.to_hf(jax.device_get(model.params)).items() if k[:5] == "clip."}
  out.mkdir()
  io.write_safetensors(state, out / "model.safetensors")
  config = {"model_type": "clip", "projection_dim": d["projection_dim"], "text_config": d["text_config"]}
  (out / "config.json").write_text(json.dumps({**config, "vision_config": d["vision_config"]}))
  return out


def test_every_writer_records_the_manifest_and_every_reader_reads_it(recorded_model, tmp_path):
  want = (32, "blur_highlight", ("text",), False, "org/some-clip", {"dataset": "synthetic", "steps": 7}, "mit")
  for out in (recorded_model.save(tmp_path / "flax"), recorded_model.export_hf(tmp_path / "hf")):
    assert (out / MANIFEST_FILE).is_file() and (out / "config.json").is_file()
    raw = json.loads((out / MANIFEST_FILE).read_text())
    assert raw["version"] == VERSION and raw["architecture"]["reduce_dim"] == recorded_model.config.reduce_dim
    assert "trained_prompts" not in json.loads((out / "config.json").read_text())  # not in config.extra any more
    got = load_model(out).manifest
    assert (got.image_size, got.prompt_mode, got.trained_prompts, got.withhold_prompt, got.clip) == want[:5]
    assert (got.provenance["training"], got.provenance["license"]) == want[5:]
    assert got.clip_sha256 == io.fingerprint(recorded_model.params["clip"])
  pth = recorded_model.export_original(tmp_path / "o" / "d.pth")
  side = json.loads(pth.with_name("d.pth.json").read_text())
  assert side["manifest"]["prompts"] == {"mode": "blur_highlight", "trained": ["text"], "withheld": False}
  assert side["manifest"]["input"] == {"image_size": 32} and side["image_size"] == 32  # old readers' key too
  got = load_model(pth, clip=str(write_clip(recorded_model, tmp_path / "clip"))).manifest
  assert (got.prompt_mode, got.trained_prompts, got.image_size) == ("blur_highlight", ("text",), 32)


def test_visual_prompts_use_the_recorded_mode(recorded_model):
  """A support goes through the mode the model was trained with: the same logits as transformers'
  semantics (`conditional_pixel_values`) on `prompts.visual_prompt(..., mode)`, not crop_blur_highlight's."""
  rng = np.random.RandomState(0)
  support = rng.randint(0, 256, (40, 50, 3), np.uint8)
  mask = np.zeros((40, 50), bool)
  mask[10:25, 5:30] = True
  pixels = np.asarray(rng.randn(1, 32, 32, 3), np.float32)
  ours = recorded_model.decode(recorded_model.encode_images(pixels), recorded_model.encode_prompts([(support, mask)]))
  for mode, same in (("blur_highlight", True), ("crop_blur_highlight", False)):
    cond = prompts.visual_prompt(support, mask, mode, 32)[None]
    ref = recorded_model(pixels, conditional_pixel_values=cond)
    assert np.allclose(np.asarray(ours)[:, 0], np.asarray(ref), atol=1e-5) == same, mode


def test_withheld_prompt_is_honoured_by_predict_and_the_evaluator(recorded_model):
  model = ClipSeg(recorded_model.config, recorded_model.params, manifest=recorded_model.manifest)
  model.manifest = model.manifest.replace(withhold_prompt=True)
  pixels = np.asarray(np.random.RandomState(1).randn(1, 32, 32, 3), np.float32)
  logits = np.asarray(model.decode(model.encode_images(pixels), model.encode_prompts(["a cat", "a red square"])))
  zero = np.asarray(model(pixels, conditional_embeddings=np.zeros((1, model.config.projection_dim), np.float32)))
  np.testing.assert_allclose(logits[:, 0], zero, atol=1e-6)
  np.testing.assert_allclose(logits[:, 1], zero, atol=1e-6)
  assert isinstance(predictor_for(model), NoPromptPredictor)
  assert not isinstance(predictor_for(recorded_model), NoPromptPredictor)


def test_bad_manifests_are_one_line_naming_the_file(recorded_model, tmp_path):
  out = recorded_model.save(tmp_path / "m")
  path = out / MANIFEST_FILE
  good = json.loads(path.read_text())
  for change, expect in (
    ({"version": VERSION + 1}, f"manifest version {VERSION + 1}, newer than this clipseg-jax reads"),
    ({"input": {"image_size": 30}}, "not a multiple of the model's patch size 16"),
    ({"prompts": {"trained": ["sound"]}}, "trained_prompts must name some of text, visual"),
    ({"architecture": {**good["architecture"], "reduce_dim": 8}}, "describes another architecture than"),
  ):
    path.write_text(json.dumps({**good, **change}))
    with pytest.raises(ValueError) as e:
      load_model(out)
    assert "\n" not in str(e.value) and str(path) in str(e.value) and expect in str(e.value), str(e.value)
  path.write_text("{")
  with pytest.raises(ManifestError, match="not valid JSON"):
    load_model(out)
  with pytest.raises(ValueError, match="unknown visual prompt mode 'sideways'"):
    ClipSeg(
      recorded_model.config, recorded_model.params, manifest=recorded_model.manifest.replace(prompt_mode="sideways")
    )


def test_backbone_checks_name_both_sides():
  config = tiny_config()
  with pytest.raises(ValueError) as e:
    backbone.check_backbone({"width": 48, "projection": 24}, config, "the decoder d.pth", "/clips/b")
  assert str(e.value) == (
    "the decoder d.pth was trained on a CLIP of vision width 48, projection 24, but the CLIP '/clips/b' has "
    "width 32, projection 24: pass the CLIP it was trained on"
  )
  backbone.check_backbone(backbone.backbone_facts(config), config, "x", "y")  # its own CLIP fits
  tree = {"w": np.ones(3, np.float32)}
  backbone.check_fingerprint("run", "c", io.fingerprint(tree), tree)  # the same weights: silent
  with pytest.raises(ValueError, match="run was trained on other weights of the CLIP 'c' than it loads now"):
    backbone.check_fingerprint("run", "c", "0" * 64, tree)
  with pytest.warns(UserWarning, match="its masks would be wrong"):
    backbone.check_fingerprint("run", "c", "0" * 64, tree, strict=False)
  assert backbone.clip_state({"text_model.w": 1}) == {"clip.text_model.w": 1}
  assert backbone.clip_state({"clip.a": 1, "decoder.b": 2}) == {"clip.a": 1}


def test_a_training_workdir_records_its_manifest(trained_run):
  """The trainer writes model/clipseg_manifest.json with the recipe's facts; loading reads it."""
  workdir, _ = trained_run
  raw = json.loads((workdir / "model" / MANIFEST_FILE).read_text())
  assert raw["input"] == {"image_size": 64} and raw["prompts"]["mode"] == "crop_blur_highlight"
  assert raw["clip"]["source"].endswith("clip") and len(raw["clip"]["sha256"]) == 64
  m = load_model(workdir).manifest
  assert m.image_size == 64 and m.provenance["training"]["steps"] == 6
