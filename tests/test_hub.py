"""The PyTorch/Hub round trip: exports that transformers' processor + model use unchanged, model cards,
file modes, `push` up to the upload call, hub downloads (revision, cache_dir) from a local Hub-cache
layout, and the embedded offline model."""

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from conftest import max_rel_err
from PIL import Image

from clipseg_jax import ClipSeg, load_model
from clipseg_jax.cli.main import main
from clipseg_jax.export import DECODER_MARKER, export_decoder
from clipseg_jax.load import workdir_provenance
from clipseg_jax.weights import io

IMAGE_SIZE = 64  # not the default 352: the export must carry the model's own input size
REPORT = {
  "task": "synthetic",
  "options": {"dataset": "synthetic/tiny", "limit": 8},
  "results": {
    "images": 8,
    "iou_fg": {"value": 0.61, "threshold": 0.4, "fixed": {"0.5": 0.58}},
    "miou": {"value": 0.55, "threshold": 0.3},
    "ap": 0.72,
  },
}


@pytest.fixture(scope="module")
def model64(tiny_model):
  """The tiny random model running at 64x64 pixels."""
  return ClipSeg(tiny_model.config, tiny_model.params, tiny_model.tokenizer, image_size=IMAGE_SIZE)


@pytest.fixture
def umask_022():
  old = os.umask(0o022)
  yield
  os.umask(old)


def modes(folder: Path) -> dict[str, int]:
  return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file()}


def front_matter(card: str) -> str:
  assert card.startswith("---\n"), card[:80]
  return card.split("---\n")[1]


def test_export_runs_in_transformers_processor_and_model(model64, tmp_path, torch, umask_022):
  """From a PIL image through CLIPSegProcessor (size, mean/std, resample from preprocessor_config.json)
  and CLIPSegForImageSegmentation (eager): the logits equal ours; every file has mode 0644."""
  from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

  out = model64.export_hf(tmp_path / "hf")
  assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", "tokenizer.json"} <= set(
    modes(out)
  )
  assert set(modes(out).values()) == {0o644}, modes(out)
  processor = CLIPSegProcessor.from_pretrained(out)
  ref = CLIPSegForImageSegmentation.from_pretrained(out, attn_implementation="eager").eval()
  image = Image.fromarray(np.random.RandomState(3).randint(0, 256, (90, 70, 3), np.uint8))  # not square
  prompts = ["a red circle", "two big dogs on the left"]
  inputs = processor(text=prompts, images=[image] * len(prompts), padding=True, return_tensors="pt")
  with torch.no_grad():
    want = ref(**inputs).logits.numpy()
  assert want.shape == (2, IMAGE_SIZE, IMAGE_SIZE)
  back = load_model(out)
  assert back.image_size == IMAGE_SIZE  # read back from preprocessor_config.json
  ours = next(back.predict_iter([image], back.encode_text(prompts)))["logits"]
  assert max_rel_err(ours, want) <= 1e-5


def test_files_respect_the_umask(tmp_path):
  old = os.umask(0o027)
  try:
    io.write_safetensors({"a": np.zeros(3, np.float32)}, tmp_path / "m.safetensors")
  finally:
    os.umask(old)
  assert stat.S_IMODE((tmp_path / "m.safetensors").stat().st_mode) == 0o640
  assert list(tmp_path.iterdir()) == [tmp_path / "m.safetensors"]  # no temporary left behind


def test_card_says_what_where_and_how(model64, tmp_path):
  from clipseg_jax.weights.io import fingerprint

  before = model64.manifest
  model64.manifest = before.replace(
    clip="openai/clip-vit-base-patch16",
    provenance={
      "training": {"dataset": "phrasecut", "steps": 20000, "batch_size": 64, "optimizer": {"learning_rate": 0.001}}
    },
  )
  try:
    out = model64.export_hf(tmp_path / "hf", evaluation=REPORT, name="org/clipseg-test", license="mit")
  finally:
    model64.manifest = before
  card = (out / "README.md").read_text()
  meta = front_matter(card)
  for line in ("library_name: transformers", 'license: "mit"'):
    assert line in meta.splitlines()
  assert "pipeline_tag" not in meta  # transformers' pipeline("image-segmentation") refuses CLIPSeg
  assert [t for t in ("clipseg", "image-segmentation", "jax", "flax") if f"- {t}" not in meta] == []
  assert 'base_model: "openai/clip-vit-base-patch16"' in meta
  assert "- dataset: phrasecut" in card and "- steps: 20000" in card and "- batch size: 64" in card
  assert "| IoU_FG (t=0.5) | 58.0 |" in card and "| AP | 72.0 |" in card
  digest = fingerprint(model64.params["clip"])  # the training code's name for it
  assert digest == io.fingerprint(model64.params["clip"]) and f"`{digest}`" in card
  assert 'CLIPSegForImageSegmentation.from_pretrained("org/clipseg-test")' in card
  assert 'clipseg_jax.load_model("org/clipseg-test")' in card
  assert json.loads((out / "eval" / "synthetic.json").read_text()) == REPORT
  assert json.loads((out / "preprocessor_config.json").read_text())["size"] == {"height": 64, "width": 64}
  with pytest.raises(ValueError, match="not an evaluation report"):
    model64.export_hf(tmp_path / "bad", evaluation={"results": {}})


def test_workdir_provenance(tmp_path):
  """What a training run's files say goes into the card: dataset, steps reached, recipe, CLIP."""
  run = {
    "batch_size": 8,
    "total_steps": 6,
    "seed": 3,
    "data": {"name": "synthetic/tiny", "train_split": "train", "pcplus": {"image_size": 64, "templates": ["{}"]}},
    "optim": {"learning_rate": 0.002, "end_learning_rate": 0.0001, "warmup_steps": 0, "weight_decay": 0.01},
  }
  (tmp_path / "model").mkdir()
  (tmp_path / "checkpoints" / "4").mkdir(parents=True)
  (tmp_path / "checkpoints" / "6").mkdir()
  (tmp_path / "config.json").write_text(json.dumps(run))
  (tmp_path / "model" / "base.json").write_text(json.dumps({"clip": "embedded:synthetic-clip", "clip_sha256": "ab"}))
  got = workdir_provenance(tmp_path)
  assert got["clip"] == "embedded:synthetic-clip" and got["clip_sha256"] == "ab"
  t = got["training"]
  assert (t["dataset"], t["steps"], t["batch_size"], t["image_size"], t["seed"]) == ("synthetic/tiny", 6, 8, 64, 3)
  assert t["optimizer"]["learning_rate"] == 0.002


@pytest.fixture
def fake_hub(monkeypatch):
  """HfApi's create_repo / create_branch / upload_folder replaced: records the calls and, at the upload,
  the folder's files, their modes and the card (the folder is temporary)."""
  from huggingface_hub import HfApi

  calls = []

  def record(name):
    def method(self, *args, **kwargs):
      call = {"name": name, "args": args, "kwargs": kwargs, "token": self.token}
      if name == "upload_folder":
        folder = Path(kwargs["folder_path"])
        call["modes"] = modes(folder)
        call["card"] = (folder / "README.md").read_text()
        call["config"] = json.loads((folder / "config.json").read_text())

        class Info:
          commit_url = f"https://huggingface.co/{kwargs['repo_id']}/commit/0123"

        calls.append(call)
        return Info()
      calls.append(call)

    return method

  for name in ("create_repo", "create_branch", "upload_folder"):
    monkeypatch.setattr(HfApi, name, record(name))
  return calls


def test_push_cli_uploads_the_hf_export_with_its_card(tiny_dir, fake_hub, umask_022, capsys):
  code = main(
    [
      "push",
      tiny_dir,
      "my-org/clipseg-tiny",
      "--private",
      "--revision",
      "dev",
      "--token",
      "hf_x",
      "--commit-message",
      "first",
    ]
  )
  assert code == 0
  assert [c["name"] for c in fake_hub] == ["create_repo", "create_branch", "upload_folder"]
  create, branch, upload = fake_hub
  assert create["args"] == ("my-org/clipseg-tiny",) and create["kwargs"]["private"] is True
  assert create["kwargs"]["exist_ok"] is True and create["token"] == "hf_x"
  assert branch["kwargs"]["branch"] == "dev"
  kw = upload["kwargs"]
  assert (kw["repo_id"], kw["revision"], kw["commit_message"]) == ("my-org/clipseg-tiny", "dev", "first")
  want = {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", "tokenizer.json"}
  assert want <= set(upload["modes"]) and set(upload["modes"].values()) == {0o644}
  assert "library_name: transformers" in upload["card"] and "# my-org/clipseg-tiny" in upload["card"]
  assert upload["config"]["model_type"] == "clipseg"
  assert "my-org/clipseg-tiny/commit/0123" in capsys.readouterr().out
  assert not Path(kw["folder_path"]).exists()  # the temporary export is gone


def test_push_flax_format_from_python(tiny_model, fake_hub):
  url = tiny_model.push_to_hub("me/tiny-flax", format="flax", evaluation=REPORT)
  assert url.endswith("/commit/0123")
  create, upload = fake_hub
  assert create["kwargs"]["private"] is False and upload["kwargs"]["revision"] is None
  assert {"clipseg_jax.json", "config.json", "README.md", "preprocessor_config.json", "eval/synthetic.json"} <= set(
    upload["modes"]
  )
  assert any(name.startswith("params/") for name in upload["modes"])
  assert "library_name: clipseg-jax" in upload["card"] and "| IoU_FG (t=0.5) | 58.0 |" in upload["card"]


def test_push_refuses_bad_names_before_any_work(tiny_model, fake_hub, capsys):
  with pytest.raises(ValueError, match="ORG_OR_USER/NAME"):
    tiny_model.push_to_hub("no-slash")
  with pytest.raises(ValueError, match="format"):
    tiny_model.push_to_hub("a/b", format="onnx")
  assert main(["push", "embedded:none", "a/b c"]) == 2  # the name is checked before the model loads
  assert "not a valid Hub name" in capsys.readouterr().err
  assert fake_hub == []


def hub_cache(cache: Path, repo: str, snapshots: dict[str, Path], refs: dict[str, str]) -> Path:
  """`cache` laid out as huggingface_hub's cache: models--ORG--NAME/{refs/REF, snapshots/HASH/...}."""
  root = cache / ("models--" + repo.replace("/", "--"))
  for commit, source in snapshots.items():
    shutil.copytree(source, root / "snapshots" / commit)
  (root / "refs").mkdir(parents=True)
  for ref, commit in refs.items():
    (root / "refs" / ref).write_text(commit)
  return root


@pytest.fixture
def offline(monkeypatch):
  from huggingface_hub import constants

  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_revision_and_cache_dir_reach_the_hub(tiny_dir, tmp_path, offline):
  """Two snapshots of one repo (the second at 64 px): the revision picks one, cache_dir is where they are."""
  v2 = tmp_path / "v2"
  shutil.copytree(tiny_dir, v2)
  pre = json.loads((v2 / "preprocessor_config.json").read_text())
  (v2 / "preprocessor_config.json").write_text(json.dumps({**pre, "size": {"height": 64, "width": 64}}))
  manifest = json.loads((v2 / "clipseg_manifest.json").read_text())
  (v2 / "clipseg_manifest.json").write_text(json.dumps({**manifest, "input": {"image_size": 64}}))
  main_hash, v2_hash = "a" * 40, "b" * 40
  cache = tmp_path / "cache"
  hub_cache(cache, "org/tiny", {main_hash: Path(tiny_dir), v2_hash: v2}, {"main": main_hash, "v2": v2_hash})

  model = load_model("org/tiny", cache_dir=cache)
  assert model.image_size == 352
  assert model.manifest.provenance["base_model"] == "org/tiny"
  assert load_model("org/tiny", cache_dir=str(cache), revision="v2").image_size == 64
  assert load_model("org/tiny", cache_dir=cache, revision=v2_hash, token="hf_x").image_size == 64
  with pytest.raises(OSError, match="'org/tiny' at revision 'v3'"):
    load_model("org/tiny", cache_dir=cache, revision="v3")
  with pytest.raises(OSError, match="org/tiny"):
    load_model("org/tiny", cache_dir=tmp_path / "empty")  # not the default cache: cache_dir is honoured

  # clip= sources resolve with the same options: a decoder-only directory naming a hub CLIP
  decoder = export_decoder(model, tmp_path / "decoder", clip=tiny_dir)
  marker = json.loads((decoder / DECODER_MARKER).read_text())
  (decoder / DECODER_MARKER).write_text(json.dumps({**marker, "clip": "org/tiny"}))
  assert load_model(decoder, cache_dir=cache).config == model.config
  with pytest.raises(OSError, match="org/tiny"):
    load_model(decoder, cache_dir=tmp_path / "empty")


def test_decoder_only_directory_checks_its_clip(tiny_model, tiny_dir, tmp_path):
  import jax

  out = export_decoder(tiny_model, tmp_path / "dec", clip=tiny_dir)
  assert not (out / "model.safetensors").exists()  # the CLIP is not copied
  back = load_model(out)
  same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), back.params, tiny_model.params)
  assert all(jax.tree.leaves(same))
  other = tmp_path / "other_clip"  # the same architecture, other CLIP weights
  params = jax.tree.map(lambda x: x, tiny_model.params)
  params["clip"] = jax.tree.map(lambda x: x + 1.0, params["clip"])
  ClipSeg(tiny_model.config, params).export_hf(other)
  marker = json.loads((out / DECODER_MARKER).read_text())
  (out / DECODER_MARKER).write_text(json.dumps({**marker, "clip": str(other)}))
  with pytest.raises(ValueError, match="other weights of the CLIP"):
    load_model(out)
  with pytest.raises(ValueError, match="not those of"):  # exporting a model whose CLIP is not the named one
    export_decoder(ClipSeg(tiny_model.config, params), tmp_path / "dec2", clip=tiny_dir)


def test_embedded_model_segments_offline(offline):
  """`embedded:synthetic`: shipped as a decoder over the embedded CLIP (a few MB), loads with no network,
  and finds the named object of a synthetic scene far better than chance."""
  from clipseg_jax.input_pipeline.synthetic import make_scene, phrases_for

  asset = io.EMBEDDED["embedded:synthetic"]
  files = {p.name for p in asset.rglob("*") if p.is_file()}
  assert "model.safetensors" not in files and "decoder.safetensors" in files and "README.md" in files
  assert sum(p.stat().st_size for p in asset.rglob("*") if p.is_file()) < 3_000_000
  assert "clipseg-jax demo" in (asset / "README.md").read_text()

  model = load_model("embedded:synthetic")
  assert model.image_size == 160
  ious, chance = [], []
  for seed in range(3):
    image, objects = make_scene(np.random.default_rng(1000 + seed))
    probs = model.predict(image, [phrases_for(o, objects)[0] for o in objects])[0]
    for obj, p in zip(objects, probs):
      pred = p > 0.5
      ious.append((pred & obj.mask).sum() / max((pred | obj.mask).sum(), 1))
      chance.append(obj.mask.mean())  # IoU of marking the whole image
  assert np.mean(ious) > 0.5 > 5 * np.mean(chance), (np.mean(ious), np.mean(chance))


def test_segment_defaults_to_the_embedded_model():
  from clipseg_jax.cli.main import build_parser

  parser = build_parser()
  assert parser.parse_args(["segment", "x.png", "--out", "o"]).checkpoint == "embedded:synthetic"
  assert parser.parse_args(["serve"]).checkpoint == "embedded:synthetic"
