"""Every command README.md shows, run exactly as written (issue 25): `clipseg-jax ...` lines in its code
blocks and the commands in its inline code. `RUN_BY` maps each one to the test here that runs it, or to
why it cannot run in a test (installs, hardware) and what runs it instead; a README edit that adds a
command without a test fails `test_every_readme_command_is_accounted_for`.

Commands run from a temporary working directory with HOME, TFDS_DATA_DIR and HF_HOME inside it and the
Hub offline: the hub ids the README names (`CIDAS/clipseg-rd64-refined`, `openai/clip-vit-base-patch16`)
are tiny random-weight stand-ins in huggingface_hub's cache layout, and the files a command names
(photo.jpg, rd64-uni.pth, ~/data/PhraseCut, ...) are written there first in their real layouts. A
command's words are what a shell would pass (`shell_words`: quotes, `~`, globs); short commands run in
this process through `main`, long jobs (`train`, `demo`, servers) as subprocesses that are stopped
once they are under way.
"""

import glob
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import make_hf_model
from PIL import Image

from clipseg_jax.cli.main import main

pytestmark = pytest.mark.slow  # builds the synthetic dataset and starts training runs and servers

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# the README and the pages it sends users to
USER_DOCS = [README, ROOT / "docs" / "training.md", ROOT / "docs" / "features.md"]
PREFIXES = ("clipseg-jax ", "make ", "pip install", "python -m ")
PORT = 7860  # the README's serve and demo-app port


class NotRun(str):
  """Why a README command cannot run in a test, and what runs it instead."""


INSTALL = "CI: `make smoke` (.ci/wheel_smoke) builds the wheel and installs it with the data and train extras"
GPU = "installs JAX for a CUDA 12 GPU / a TPU from PyPI: the test machines have neither the hardware nor a registry"
MAKE = "CI (.ci/run) runs `make lint`, `make smoke` and `make test`; they create .venv from PyPI, which tests cannot"

EXPRESSIONS = "test_expressions_and_exports"

# README command -> the test below that runs it as written, or NotRun(reason).
RUN_BY = {
  # set-up and install lines
  "pip install '.[data,train]'": NotRun(INSTALL + " (the same install from a checkout)"),
  "pip install 'clipseg-jax[data,train] @ git+https://github.com/clipseg-jax/clipseg-jax'": NotRun(
    "installs from GitHub (tests never reach the network); make smoke installs the same package and extras"
  ),
  'pip install -U "jax[cuda12]"': NotRun(GPU),
  'pip install -U "jax[tpu]"': NotRun(GPU),
  "make demo": NotRun(MAKE + "; its command, `clipseg-jax demo`, runs in test_full_demo_starts_and_stops_at_sigterm"),
  "make test": NotRun(MAKE + " (`make test` is CI's last stage)"),
  "make test-fast": NotRun(MAKE + "; the same pytest selection as `make test` with -m 'not slow and not nightly'"),
  "make test-all": NotRun(MAKE + "; `make test` plus the nightly tier"),
  "make lint": NotRun(MAKE + " (`make lint` is CI's first stage)"),
  "make setup": NotRun(MAKE + " (every make target above runs it first)"),
  "make setup TORCH_SPEC=...": NotRun("a template for another torch wheel (`make setup` with its default runs in CI)"),
  "python -m experiments.bench.pcplus_throughput --breakdown": NotRun(
    "minutes of loader measurements (400 samples x 4 paths x 3 worker counts) with no quick option; "
    "tests/test_pipeline_device.py::test_throughput_bench_prints_one_line_per_worker_count runs it with "
    "--breakdown and small sizes"
  ),
  "python -m experiments.bench.train_step --gpu --end-to-end": NotRun(
    "times ViT-B/16 at batch 256 in bf16 on a GPU; tests/test_pipeline_device.py::"
    "test_train_step_end_to_end_bench_runs_on_cpu (nightly) runs --end-to-end on CPU with small sizes"
  ),
  # data
  "clipseg-jax data build synthetic": "test_data_build",
  "clipseg-jax data build phrasecut --manual-dir ~/data/PhraseCut": "test_data_build",
  "clipseg-jax data build pascal_voc --manual-dir ~/data/VOC": "test_data_build",
  "clipseg-jax data build coco --manual-dir ~/data/coco2014": "test_data_build",
  # inference and conversion
  'clipseg-jax segment photo.jpg more/*.png --prompt "a cat" --prompt "a sofa" --out masks/': "test_segment",
  "clipseg-jax convert CIDAS/clipseg-rd64-refined out/hf --to hf": "test_convert",
  "clipseg-jax convert rd64-uni.pth out/rd64-uni --to hf --clip openai/clip-vit-base-patch16": "test_convert",
  # evaluation
  "clipseg-jax eval --checkpoint CIDAS/clipseg-rd64-refined --task phrasecut": "test_eval_tasks",
  "clipseg-jax eval --checkpoint CIDAS/clipseg-rd64-refined --task pascal_zeroshot": "test_eval_tasks",
  "clipseg-jax eval --checkpoint CIDAS/clipseg-rd64-refined --task pascal5i --fold 0": "test_eval_tasks",
  "clipseg-jax eval --checkpoint CIDAS/clipseg-rd64-refined --task coco20i --fold 0 --episodes 100": "test_eval_tasks",
  # expressions, label maps, instances, calibration, video, deployable models
  """clipseg-jax segment scene.png --prompt '"the star" - "blue star"' --out algebra/""": EXPRESSIONS,
  'clipseg-jax segment scene.png --prompt "blue star" --prompt "green triangle" --label-map --out labels/': EXPRESSIONS,
  'clipseg-jax segment scene.png --prompt "the star" --instances --min-area 40 --fill-holes --dilate 2 --feather 3 '
  "--out parts/": EXPRESSIONS,
  "clipseg-jax calibrate examples/ --out thresholds.json": EXPRESSIONS,
  'clipseg-jax segment clip.mp4 --prompt "a red circle" --smooth 0.5 --out masks/': EXPRESSIONS,
  'clipseg-jax convert embedded:synthetic seg/ --to stablehlo --prompt "a red circle" '
  '--prompt "a blue square"': EXPRESSIONS,
  # the demo, then what the README does with its output
  "clipseg-jax demo --steps 100 --no-ablations": "test_demo_then_eval_and_push",
  "clipseg-jax eval --checkpoint out/demo/run --task synthetic --data-dir out/demo/tfds --limit 50": (
    "test_demo_then_eval_and_push"
  ),
  "clipseg-jax push out/demo/run my-org/clipseg-synthetic --private": "test_demo_then_eval_and_push",
  "clipseg-jax demo": "test_full_demo_starts_and_stops_at_sigterm",
  # training
  "clipseg-jax train --config synthetic --workdir out/run": "test_train_commands",
  # (with LOW_MEMORY appended: the recipe as written needs ~19 GB, see the test)
  "clipseg-jax train --config rd64_uni --workdir runs/rd64 --config.optim.learning_rate=3e-4": "test_train_commands",
  "clipseg-jax pretrain-clip --config synthetic_clip --workdir out/synthetic_clip --install": "test_pretrain_clip",
  # servers
  "clipseg-jax serve --checkpoint CIDAS/clipseg-rd64-refined --port 7860": "test_serve",
  "clipseg-jax demo-app --checkpoint CIDAS/clipseg-rd64-refined": "test_demo_app",
}


def readme_commands(text: str) -> set[str]:
  """`clipseg-jax ...` lines of the code blocks (a trailing `# comment` dropped), and inline code spans
  (joined over line breaks) that start with one of PREFIXES."""
  found, prose, fenced = set(), [], False
  for line in text.splitlines():
    if line.lstrip().startswith("```"):
      fenced = not fenced
    elif fenced:
      if line.strip().startswith("clipseg-jax "):
        found.add(re.sub(r"\s+#.*$", "", line.strip()))
    else:
      prose.append(line)
  for span in re.findall(r"`([^`]+)`", "\n".join(prose)):
    span = " ".join(span.replace("\\|", "|").split())  # a table cell escapes |
    if span.startswith(PREFIXES):
      found.add(span)
  return found


def test_every_readme_command_is_accounted_for():
  assert set().union(*(readme_commands(page.read_text()) for page in USER_DOCS)) == set(RUN_BY)
  tests = {name for name, value in globals().items() if name.startswith("test_") and callable(value)}
  for command, runner in RUN_BY.items():
    assert isinstance(runner, NotRun) or runner in tests, (command, runner)


def test_readme_command_extraction():
  text = (
    "Run `clipseg-jax a  b\n  c` or `make x`, not `ruff`.\n```\nclipseg-jax y z   # note\n  not-this\n```\n"
    "| `clipseg-jax p --f hf\\|flax` |\n"
  )
  assert readme_commands(text) == {"clipseg-jax a b c", "make x", "clipseg-jax y z", "clipseg-jax p --f hf|flax"}


# ---- running a command as a shell would --------------------------------------------------------------------


def shell_words(command: str, cwd: Path) -> list[str]:
  """The argv a POSIX shell passes for `command` run in `cwd`: quotes removed, a leading `~/` expanded,
  globs expanded where they match (left as written where they do not, as bash does)."""
  words = []
  for word in shlex.split(command):
    if word.startswith("~/"):
      word = os.path.expanduser(word)
    matches = sorted(glob.glob(word, root_dir=cwd)) if any(c in word for c in "*?[") else []
    words.extend(matches or [word])
  return words


def readme(command: str) -> str:
  """`command`, checked to be one RUN_BY gives to the calling test (so each test runs README text)."""
  caller = sys._getframe(1).f_code.co_name
  assert RUN_BY.get(command) == caller, f"{command!r} is not README text given to {caller}"
  return command


def run_here(command: str, cwd: Path) -> str:
  """Run a README command in this process (`clipseg-jax` is `main`) in `cwd`; its stdout. Fails on a
  non-zero exit, showing its stderr."""
  import contextlib
  import io

  argv = shell_words(command, cwd)
  assert argv[0] == "clipseg-jax", argv
  out, err, old = io.StringIO(), io.StringIO(), os.getcwd()
  os.chdir(cwd)
  try:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      code = main(argv[1:])
  finally:
    os.chdir(old)
  assert code == 0, f"{command}: exit {code}\n{err.getvalue()[-3000:]}"
  return out.getvalue()


class Job:
  """A README command as a subprocess (`python -m clipseg_jax.cli.main` is `clipseg-jax`) in its own
  process group, its merged output collected as it comes."""

  def __init__(self, command: str, cwd: Path, env: dict | None = None):
    argv = shell_words(command, cwd)
    assert argv[0] == "clipseg-jax", argv
    self.command = command
    self.proc = subprocess.Popen(
      [sys.executable, "-m", "clipseg_jax.cli.main", *argv[1:]],
      cwd=cwd,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      env={**os.environ, **(env or {})},
      start_new_session=True,
    )
    self.chunks = []
    self.reader = threading.Thread(target=self._read, daemon=True)
    self.reader.start()

  def _read(self):
    fd = self.proc.stdout.fileno()
    for chunk in iter(lambda: os.read(fd, 65536), b""):  # what has come, not a full buffer
      self.chunks.append(chunk.decode(errors="replace"))

  @property
  def output(self) -> str:
    return "".join(self.chunks)

  def wait_for(self, pattern: str, timeout: float) -> re.Match:
    deadline = time.time() + timeout
    while time.time() < deadline:
      found = re.search(pattern, self.output)
      if found:
        return found
      if self.proc.poll() is not None:
        self.reader.join(5)
        found = re.search(pattern, self.output)
        assert found, f"{self.command}: exited {self.proc.returncode} before {pattern!r}:\n{self.output[-3000:]}"
        return found
      time.sleep(0.2)
    self.stop()
    raise AssertionError(f"{self.command}: no {pattern!r} within {timeout} s:\n{self.output[-3000:]}")

  def terminate(self, timeout: float = 180) -> int:
    """SIGTERM to the command's process; its exit status."""
    self.proc.send_signal(signal.SIGTERM)
    try:
      code = self.proc.wait(timeout)
    finally:
      self.stop()
    return code

  def stop(self):
    """Kill what is left of the process group this job started (grain workers, pool processes)."""
    try:
      os.killpg(self.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
    self.proc.wait(30)
    self.reader.join(5)


# A training step done: tqdm's "train:" bar past step 0 (the trainer's SIGTERM handler is installed by then).
TRAINING = r"train:\s+\d+%\|[^|]*\|\s*[1-9]\d*/\d+"


def checkpoint_steps(workdir: Path) -> list[int]:
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


# ---- the user's machine: hub cache, home, datasets' original files ---------------------------------------------


def hub_snapshot(cache: Path, repo_id: str) -> Path:
  """A snapshot folder of `repo_id` in huggingface_hub's cache layout (models--ORG--NAME/{refs/main,
  snapshots/HASH}), found offline by snapshot_download."""
  repo = cache / ("models--" + repo_id.replace("/", "--"))
  commit = hashlib.sha1(repo_id.encode()).hexdigest()
  (repo / "refs").mkdir(parents=True)
  (repo / "refs" / "main").write_text(commit)
  snapshot = repo / "snapshots" / commit
  snapshot.mkdir(parents=True)
  return snapshot


def write_stand_ins(cache: Path) -> dict[str, Path]:
  """Tiny random-weight models under the README's hub ids: CLIPSeg's refined model as transformers saves
  it (ViT-B/16's depth, patch and 224 px position grid, layers (3, 6, 9), reduce_dim 64, but 32 wide) and
  the CLIPModel its CLIP is (the same tensors), each with OpenAI CLIP's tokenizer files."""
  from transformers import CLIPConfig, CLIPModel

  from clipseg_jax.config import VisionConfig, tiny_config
  from clipseg_jax.tokenizer import default_tokenizer

  vision = VisionConfig(
    hidden_size=32, intermediate_size=64, num_hidden_layers=12, num_attention_heads=4, image_size=224, patch_size=16
  )
  config = tiny_config(
    vision_config=vision,
    extract_layers=(3, 6, 9),
    reduce_dim=64,
    decoder_intermediate_size=64,
    use_complex_transposed_convolution=True,
  )
  clipseg = make_hf_model(config)
  snapshots = {"CIDAS/clipseg-rd64-refined": hub_snapshot(cache, "CIDAS/clipseg-rd64-refined")}
  clipseg.save_pretrained(snapshots["CIDAS/clipseg-rd64-refined"])
  hf = clipseg.config
  clip = CLIPModel(
    CLIPConfig(
      text_config=hf.text_config.to_dict(), vision_config=hf.vision_config.to_dict(), projection_dim=hf.projection_dim
    )
  )
  clip.load_state_dict(clipseg.clip.state_dict())
  snapshots["openai/clip-vit-base-patch16"] = hub_snapshot(cache, "openai/clip-vit-base-patch16")
  clip.save_pretrained(snapshots["openai/clip-vit-base-patch16"])
  for snapshot in snapshots.values():
    default_tokenizer().save_pretrained(str(snapshot))
  return snapshots


def write_phrasecut(root: Path) -> dict[str, int]:
  """PhraseCut's files (refer_{train,val,test}.json, image_data_split.json, images/ID.jpg); pairs per split."""
  from conftest import write_jpeg

  splits = {1: "train", 2: "train", 3: "val", 4: "test", 5: "test"}
  for image_id in splits:
    write_jpeg(root / "images" / f"{image_id}.jpg", 48, 64, image_id)
  (root / "image_data_split.json").write_text(
    json.dumps([{"image_id": i, "height": 48, "width": 64, "split": s} for i, s in splits.items()])
  )
  rect = lambda x0, y0, x1, y1: [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]
  pairs = {
    "train": [
      {
        "task_id": "1__a",
        "image_id": 1,
        "phrase": "red car",
        "Polygons": [[rect(0, 0, 20, 20)], [rect(30, 10, 50, 30)]],
      },
      {"task_id": "1__b", "image_id": 1, "phrase": "tree", "Polygons": [[rect(40, 0, 63, 47)]]},
      {"task_id": "2__a", "image_id": 2, "phrase": "red car", "Polygons": [[rect(5, 5, 30, 40)]]},
    ],
    "val": [{"task_id": "3__a", "image_id": 3, "phrase": "tree", "Polygons": [[rect(10, 10, 40, 40)]]}],
    "test": [
      {"task_id": "4__a", "image_id": 4, "phrase": "sky", "Polygons": [[rect(0, 0, 63, 12)]]},
      {"task_id": "5__a", "image_id": 5, "phrase": "a dog", "Polygons": [[rect(20, 20, 44, 40)]]},
    ],
  }
  for split, records in pairs.items():
    (root / f"refer_{split}.json").write_text(json.dumps(records))
  return {split: len(records) for split, records in pairs.items()}


def write_hsnet_coco(manual: Path, n_images: int = 2) -> Path:
  """COCO2014/ as hsnet lays it out (annotations/val2014/NAME.png label maps, val2014/NAME.jpg): every image
  holds all 80 classes (a 10-by-8 grid of cells), so each COCO-20i fold has episodes."""
  from test_one_shot import write_noise_jpeg

  base = manual / "COCO2014"
  (base / "annotations" / "val2014").mkdir(parents=True)
  for k in range(n_images):
    name = f"COCO_val2014_{42 + k:012d}"
    write_noise_jpeg(base / "val2014" / f"{name}.jpg", 80, 160, k)
    seg = np.arange(1, 81, dtype=np.uint8).reshape(8, 10).repeat(10, 0).repeat(16, 1)
    Image.fromarray(seg, "L").save(base / "annotations" / "val2014" / f"{name}.png")
  return base


def scene(seed: int, size: int = 96) -> Image.Image:
  from clipseg_jax.input_pipeline.synthetic import make_scene

  return Image.fromarray(make_scene(np.random.default_rng(seed), size)[0])


class User:
  """The temporary machine: `home` (HOME), `tfds` (TFDS_DATA_DIR), the hub cache, and fresh working
  directories (`cwd(name)`)."""

  def __init__(self, root: Path):
    self.root, self.home, self.tfds = root, root / "home", root / "home" / "tensorflow_datasets"
    self.home.mkdir()

  def cwd(self, name: str) -> Path:
    d = self.root / "work" / name
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="module")
def user(tmp_path_factory):
  import huggingface_hub.constants

  root = tmp_path_factory.mktemp("readme")
  u = User(root)
  hf_home = root / "hf"
  u.snapshots = write_stand_ins(hf_home / "hub")
  env = {
    "HOME": str(u.home),
    "TFDS_DATA_DIR": str(u.tfds),
    "HF_HOME": str(hf_home),
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
  }
  with pytest.MonkeyPatch.context() as mp:
    for k, v in env.items():
      mp.setenv(k, v)
    # huggingface_hub read HF_HOME when it was imported: point this process's default cache there too.
    mp.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    yield u


@pytest.fixture(scope="module")
def datasets(user):
  """The README's four `data build` lines run in order, on the datasets' original files written under
  ~/data; {name: the command's output}."""
  from test_one_shot import write_pfenet_voc

  data = user.home / "data"
  user.phrasecut_pairs = write_phrasecut(data / "PhraseCut")
  write_pfenet_voc(data / "VOC" / "VOCdevkit")  # VOCdevkit/VOC2012/{JPEGImages,SegmentationClassAug,ImageSets}
  write_hsnet_coco(data / "coco2014")
  cwd = user.cwd("data")
  out = {}
  for command in RUN_BY:
    if RUN_BY[command] == "test_data_build":
      out[command.split()[3]] = run_here(command, cwd)
  return out


# ---- the commands ----------------------------------------------------------------------------------------------


def test_data_build(user, datasets):
  assert "(train: 2000 records, validation: 100 records, test: 200 records)" in datasets["synthetic"]
  assert "(train: 2 records, val: 1 records, test: 2 records)" in datasets["phrasecut"]  # records are images
  assert re.search(r"prepared pascal_voc in .*val: \d+ records", datasets["pascal_voc"])
  assert re.search(r"prepared coco in .*validation: 2 records", datasets["coco"])
  for name in ("clipseg_synthetic", "clipseg_phrasecut", "clipseg_pascal_voc", "clipseg_coco"):
    assert (user.tfds / name).is_dir(), sorted(p.name for p in user.tfds.iterdir())


def test_segment(user):
  command = readme('clipseg-jax segment photo.jpg more/*.png --prompt "a cat" --prompt "a sofa" --out masks/')
  cwd = user.cwd("segment")
  sizes = {"photo.jpg": (96, 96), "more/a.png": (64, 80), "more/b.png": (50, 40)}
  for i, (name, (h, w)) in enumerate(sizes.items()):
    (cwd / name).parent.mkdir(exist_ok=True)
    scene(i, 96).resize((w, h)).save(cwd / name)
  run_here(command, cwd)
  masks = sorted((cwd / "masks").glob("*_mask.png"))
  assert len(masks) == 6, masks  # 3 images x 2 prompts
  for name, (h, w) in sizes.items():
    stem = Path(name).stem
    own = [m for m in masks if m.name.startswith(stem + "_")]
    assert len(own) == 2 and all(Image.open(m).size == (w, h) for m in own), (name, own)
    assert (cwd / "masks" / f"{stem}_overlay.png").exists()


def test_convert(user):
  from safetensors.numpy import load_file

  from clipseg_jax import load_model

  cwd = user.cwd("convert")
  stand_in = load_file(user.snapshots["CIDAS/clipseg-rd64-refined"] / "model.safetensors")
  run_here(readme("clipseg-jax convert CIDAS/clipseg-rd64-refined out/hf --to hf"), cwd)
  got = load_file(cwd / "out" / "hf" / "model.safetensors")
  assert set(got) == set(stand_in) - {k for k in stand_in if "position_ids" in k}
  assert all(np.array_equal(got[k], stand_in[k]) for k in got)

  # The original decoder file the README converts: the stand-in's decoder, written as the original code does.
  load_model("CIDAS/clipseg-rd64-refined").export_original(cwd / "rd64-uni.pth")
  for p in cwd.glob("rd64-uni*.json"):
    p.unlink()  # a file from the original repository comes without our sidecar
  command = "clipseg-jax convert rd64-uni.pth out/rd64-uni --to hf --clip openai/clip-vit-base-patch16"
  run_here(readme(command), cwd)
  got = load_file(cwd / "out" / "rd64-uni" / "model.safetensors")
  clip = load_file(user.snapshots["openai/clip-vit-base-patch16"] / "model.safetensors")
  for k, v in got.items():
    want = stand_in[k] if k.startswith("decoder.") else clip[k.removeprefix("clip.")]
    assert np.array_equal(v, want), k


def test_eval_tasks(user, datasets):
  cwd = user.cwd("eval")
  commands = [c for c, runner in RUN_BY.items() if runner == "test_eval_tasks"]
  for command in commands:
    start = time.perf_counter()
    run_here(readme(command), cwd)
    task = command.split("--task ")[1].split()[0]
    report = json.loads((cwd / "out" / "eval" / f"{task}.json").read_text())
    print(f"{task}: {time.perf_counter() - start:.1f} s")
    assert report["task"] == task and (cwd / "out" / "eval" / f"{task}.md").exists()
  phrasecut = json.loads((cwd / "out" / "eval" / "phrasecut.json").read_text())
  assert phrasecut["results"]["images"] == user.phrasecut_pairs["test"]


def write_video(path: Path, frames: list[np.ndarray], fps: int = 5):
  import av

  with av.open(str(path), "w") as container:
    stream = container.add_stream("mpeg4", rate=fps)
    stream.height, stream.width = frames[0].shape[:2]
    stream.pix_fmt = "yuv420p"
    for frame in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode())


def test_expressions_and_exports(user):
  """The README's expression, label-map, instance, calibration, video and StableHLO lines on the embedded
  model, from a folder holding the files they name (scene.png, examples/, clip.mp4)."""
  from clipseg_jax.input_pipeline.synthetic import make_scene

  cwd = user.cwd("expressions")
  image, objects = make_scene(np.random.default_rng(5), 128)
  Image.fromarray(image).save(cwd / "scene.png")
  examples = cwd / "examples"
  (examples / "images").mkdir(parents=True)
  (examples / "labels").mkdir()
  classes = [f"{objects[0].color} {objects[0].shape}", f"{objects[1].color} {objects[1].shape}"]
  (examples / "classes.txt").write_text("\n".join(classes) + "\n")
  for seed in range(2):
    labels = np.zeros((128, 128), np.uint8)
    for i, o in enumerate(objects[:2], 1):
      labels[o.mask] = i
    Image.fromarray(image).save(examples / "images" / f"{seed}.png")
    Image.fromarray(labels).save(examples / "labels" / f"{seed}.png")
  pytest.importorskip("av")
  write_video(cwd / "clip.mp4", [make_scene(np.random.default_rng(k), 64)[0] for k in range(4)])

  commands = [c for c, runner in RUN_BY.items() if runner == "test_expressions_and_exports"]
  for command in commands:
    run_here(readme(command), cwd)
  for out in ("algebra", "labels", "parts", "masks", "seg"):
    assert any((cwd / out).iterdir()), out
  assert json.loads((cwd / "thresholds.json").read_text())
  assert list((cwd / "masks").glob("*")) and (cwd / "seg" / "spec.json").exists()


@pytest.fixture(scope="module")
def demo_dir(user, datasets):
  """A working directory whose out/demo/tfds is the TFDS directory `data build synthetic` prepared (so the
  demo finds its dataset there instead of building the same 2300 scenes again)."""
  cwd = user.cwd("demo")
  (cwd / "out" / "demo").mkdir(parents=True)
  (cwd / "out" / "demo" / "tfds").symlink_to(user.tfds, target_is_directory=True)
  return cwd


@pytest.mark.nightly  # ~4 min: builds the full synthetic set and trains; test_training.py runs the demo in CI
def test_demo_then_eval_and_push(user, demo_dir, monkeypatch):
  from huggingface_hub import HfApi

  from clipseg_jax import load_model

  cwd = demo_dir
  out = run_here(readme("clipseg-jax demo --steps 100 --no-ablations"), cwd)
  assert re.search(r"^-> CLIPSeg .*IoU_FG", out, re.M), out[-2000:]
  assert (cwd / "out" / "demo" / "overlay_0.png").exists() and checkpoint_steps(cwd / "out" / "demo" / "run")[-1] == 100
  load_model(str(cwd / "out" / "demo" / "run"))  # as the README says it loads

  command = "clipseg-jax eval --checkpoint out/demo/run --task synthetic --data-dir out/demo/tfds --limit 50"
  run_here(readme(command), cwd)
  report = json.loads((cwd / "out" / "eval" / "synthetic.json").read_text())
  assert report["results"]["images"] == 50

  calls = []

  def record(name):
    def method(self, *args, **kwargs):
      calls.append((name, args, kwargs))
      if name == "upload_folder":
        files = {p.name for p in Path(kwargs["folder_path"]).iterdir()}
        assert {"config.json", "model.safetensors", "README.md"} <= files, files
        return type("Info", (), {"commit_url": f"https://huggingface.co/{kwargs['repo_id']}/commit/0"})()

    return method

  for name in ("create_repo", "create_branch", "upload_folder"):
    monkeypatch.setattr(HfApi, name, record(name))
  out = run_here(readme("clipseg-jax push out/demo/run my-org/clipseg-synthetic --private"), cwd)
  assert [c[0] for c in calls] == ["create_repo", "upload_folder"], calls
  assert calls[0][1] == ("my-org/clipseg-synthetic",) and calls[0][2]["private"] is True
  assert calls[1][2]["repo_id"] == "my-org/clipseg-synthetic" and "commit/0" in out


@pytest.mark.nightly  # the trainer's SIGTERM path runs in CI (test_training.py)
def test_full_demo_starts_and_stops_at_sigterm(user, datasets, tmp_path):
  """`clipseg-jax demo` as `make demo` runs it (about 21 minutes): stopped at its first training step, it
  saves the run and exits 0 (rerunning resumes)."""
  cwd = tmp_path
  (cwd / "out" / "demo").mkdir(parents=True)
  (cwd / "out" / "demo" / "tfds").symlink_to(user.tfds, target_is_directory=True)
  job = Job(readme("clipseg-jax demo"), cwd)
  job.wait_for(TRAINING, 600)
  assert job.terminate() == 0, job.output[-3000:]
  assert "stopped at a SIGTERM" in job.output
  assert checkpoint_steps(cwd / "out" / "demo" / "run")


LOW_MEMORY = " --config.batch_size=8 --config.data.workers=0"


@pytest.mark.nightly  # ~2 min: two training starts; the same CLI path trains in test_training.py
def test_train_commands(user, datasets, tmp_path):
  """Both README training commands, each stopped by SIGTERM once a step is done: it saves and exits 0.
  The paper's recipe as written (batch 64 at 352 px, 2 grain workers) took ~19 GB of memory here even on
  the 32-wide stand-in CLIP, more than a shared test machine has: it runs with LOW_MEMORY appended (the
  recipe, the hub CLIP, the PhraseCut data and the README's override as written)."""
  commands = [c for c, runner in RUN_BY.items() if runner == "test_train_commands"]
  for command in commands:
    workdir = tmp_path / shlex.split(command)[shlex.split(command).index("--workdir") + 1]
    extra = LOW_MEMORY if "rd64_uni" in command else ""
    job = Job(readme(command) + extra, tmp_path)
    job.wait_for(TRAINING, 600)
    assert job.terminate() == 0, job.output[-3000:]
    assert "SIGTERM: saved step" in job.output and checkpoint_steps(workdir), job.output[-2000:]


@pytest.mark.nightly  # test_clip_pretrain.py runs pretraining and its install in CI
def test_pretrain_clip(user, datasets, tmp_path):
  """`--install` writes into the package's embedded CLIP: the command runs against a copy of the package
  (PYTHONPATH). As written it pretrains for hours: it is stopped while it renders its scene pool (before
  anything is installed). The same command with a 2-step recipe then installs into the copy."""
  import clipseg_jax
  from clipseg_jax.weights.io import EMBEDDED

  package = Path(clipseg_jax.__file__).parent
  copy = tmp_path / "site"
  shutil.copytree(package, copy / "clipseg_jax", ignore=shutil.ignore_patterns("__pycache__"))
  embedded_clip = copy / "clipseg_jax" / EMBEDDED["embedded:synthetic-clip"].relative_to(package)
  before = {p.name: p.read_bytes() for p in embedded_clip.iterdir()}
  real = {p.name: p.read_bytes() for p in EMBEDDED["embedded:synthetic-clip"].iterdir()}
  env = {"PYTHONPATH": str(copy)}
  command = readme("clipseg-jax pretrain-clip --config synthetic_clip --workdir out/synthetic_clip --install")
  cwd = tmp_path / "work"
  cwd.mkdir()
  job = Job(command, cwd, env)
  job.wait_for(r"\d+/30000", 300)  # rendering the 30000-scene pool
  job.terminate(60)
  assert {p.name: p.read_bytes() for p in embedded_clip.iterdir()} == before

  short = ["--config.total_steps=2", "--config.batch_size=4", "--config.data.pool=8", "--config.log_every=1"]
  job = Job(command + " " + " ".join(short), cwd, env)
  job.proc.wait(600)
  job.reader.join(5)
  assert job.proc.returncode == 0, job.output[-3000:]
  assert f"installed into {embedded_clip}" in job.output, job.output[-2000:]
  trained = {p.name: p.read_bytes() for p in (cwd / "out" / "synthetic_clip" / "clip").iterdir()}
  assert {name: (embedded_clip / name).read_bytes() for name in trained} == trained
  assert trained["model.safetensors"] != before["model.safetensors"]
  assert {p.name: p.read_bytes() for p in EMBEDDED["embedded:synthetic-clip"].iterdir()} == real  # untouched


def port_free(port: int) -> bool:
  with socket.socket() as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: TIME_WAIT is no conflict
    try:
      s.bind(("127.0.0.1", port))
    except OSError:
      return False
  return True


def test_serve(user, tmp_path):
  import base64
  import io

  if not port_free(PORT):
    pytest.skip(f"port {PORT}, which the README's serve command names, is in use on this machine")
  job = Job(readme("clipseg-jax serve --checkpoint CIDAS/clipseg-rd64-refined --port 7860"), tmp_path)
  try:
    job.wait_for(r"serving .* on http://127\.0\.0\.1:7860", 300)
    buf = io.BytesIO()
    scene(1, 64).save(buf, "PNG")
    body = json.dumps({"image": base64.b64encode(buf.getvalue()).decode(), "prompts": ["a cat", "a sofa"]})
    request = urllib.request.Request(
      f"http://127.0.0.1:{PORT}/api/segment", data=body.encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as r:
      assert r.status == 200
      answer = json.loads(r.read())
    assert [m["prompt"] for m in answer["masks"]] == ["a cat", "a sofa"]
  finally:
    job.stop()


def test_demo_app(user, tmp_path):
  pytest.importorskip("gradio")
  if not port_free(PORT):
    pytest.skip(f"port {PORT}, the demo-app's default, is in use on this machine")
  job = Job(readme("clipseg-jax demo-app --checkpoint CIDAS/clipseg-rd64-refined"), tmp_path)
  try:
    deadline = time.time() + 300
    while True:
      assert job.proc.poll() is None, job.output[-3000:]
      try:
        with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/", timeout=10) as r:
          page = r.read().decode()
        break
      except OSError:
        assert time.time() < deadline, job.output[-3000:]
        time.sleep(0.5)
    assert r.status == 200 and "gradio" in page.lower()
  finally:
    job.stop()
