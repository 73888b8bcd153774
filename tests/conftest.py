"""Shared fixtures: random-weight checkpoints saved to disk (tests never reach the network).

`tiny_checkpoint` is made by transformers (torch): the reference for parity and conversion tests.
`tiny_dir` / `tiny_model` are written by clipseg-jax itself (no torch): for tests of behaviour only.
"""

import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import jax
import numpy as np
import pytest
from PIL import Image

from clipseg_jax.config import ClipSegConfig, tiny_config

_OWN_XLA_CACHE = []  # the cache folder this process made (and removes at the end)


def pytest_configure(config):
  """One persistent XLA compilation cache for the whole run, shared by the pytest process(es) and every CLI
  they start (xdist workers, started after this, and subprocesses inherit the variables): the many tiny
  training runs of one recipe compile their programs once. A size limit turns on JAX's file lock, so
  workers share it safely. A fresh folder each run: nothing carries over between runs."""
  if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_XLA_CACHE.append(tempfile.mkdtemp(prefix="clipseg_jax_tests_xla_"))
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_XLA_CACHE[0]
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 << 30))
  jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
  for name in ("jax_persistent_cache_min_compile_time_secs", "jax_compilation_cache_max_size"):
    if name.upper() in os.environ:
      value = os.environ[name.upper()]
      jax.config.update(name, float(value) if name.endswith("secs") else int(value))


def pytest_unconfigure(config):
  for folder in _OWN_XLA_CACHE:
    shutil.rmtree(folder, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
  """Modules holding slow tests first, each module's tests together and in order: under xdist the long
  training runs start early and the quick tests fill the end, and module fixtures are built once per worker."""
  first = {}
  for item in items:
    first.setdefault(item.module.__name__, len(first))
  slow = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
  items.sort(key=lambda item: (item.module.__name__ not in slow, first[item.module.__name__]))


def max_rel_err(ours, ref) -> float:
  """The largest elementwise difference relative to the largest |ref| (one array; cf. test_training's
  norm-wise `norm_rel_err` over parameter trees)."""
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (ours.shape, ref.shape)
  return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30))


def make_hf_model(config: ClipSegConfig, seed: int = 0):
  """transformers' CLIPSegForImageSegmentation with random weights, biases and LayerNorm scales too
  (so that a swapped or dropped tensor in conversion cannot go unnoticed)."""
  import torch
  from transformers import CLIPSegConfig, CLIPSegForImageSegmentation

  torch.manual_seed(seed)
  return perturb_biases_and_norms(CLIPSegForImageSegmentation(CLIPSegConfig(**config.to_dict()))).eval()


def perturb_biases_and_norms(model):
  """Random biases and LayerNorm scales (transformers initialises them to 0 and 1), so that a swapped or
  dropped tensor in conversion cannot go unnoticed."""
  import torch

  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("bias"):
        p.normal_(0.0, 0.05)
      elif "norm" in name and p.ndim == 1:
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
  return model


def save_hf(model, directory) -> str:
  """Save, then reload with eager attention (the parity reference)."""
  from transformers import CLIPSegForImageSegmentation

  model.save_pretrained(directory)
  return CLIPSegForImageSegmentation.from_pretrained(directory, attn_implementation="eager").eval()


def torch_nchw(x):
  import torch

  return torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2)))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
  """(directory, eager reference model) for the tiny refined config."""
  d = tmp_path_factory.mktemp("tiny_refined")
  ref = save_hf(make_hf_model(tiny_config(use_complex_transposed_convolution=True)), d)
  return str(d), ref


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> str:
  """An HF-format directory of the tiny refined config with random weights, written without torch."""
  from clipseg_jax import ClipSeg
  from clipseg_jax.models.clipseg import init_params

  config = tiny_config(use_complex_transposed_convolution=True)
  d = tmp_path_factory.mktemp("tiny_jax")
  params = jax.jit(lambda key: init_params(config, key))(jax.random.PRNGKey(0))  # one compile, not 100s of ops
  ClipSeg(config, params).export_hf(d)
  return str(d)


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
  from clipseg_jax import load_model

  return load_model(tiny_dir)


@pytest.fixture(scope="session")
def training_root(tmp_path_factory):
  """A tiny random CLIP (HF CLIPModel layout, `clip/`) and the tiny synthetic dataset (`tfds/`), for the
  training tests."""
  import torch
  from transformers import CLIPConfig, CLIPModel

  from clipseg_jax.input_pipeline import build

  torch.manual_seed(0)
  root = tmp_path_factory.mktemp("train")
  config = CLIPConfig(
    text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
    vision_config=dict(
      hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, image_size=64, patch_size=16
    ),
    projection_dim=24,
  )
  CLIPModel(config).save_pretrained(root / "clip")
  build("synthetic/tiny", data_dir=root / "tfds")
  return root


def training_overrides(root, **extra) -> list[str]:
  """`--config.KEY=VALUE` arguments that train the synthetic recipe on `training_root`'s tiny CLIP and
  dataset in a few seconds; `extra` adds or replaces keys."""
  values = {
    "model.clip": str(root / "clip"),
    "data.name": "synthetic/tiny",
    "data.data_dir": str(root / "tfds"),
    "data.pcplus.image_size": 64,
    "batch_size": 8,
    "total_steps": 6,
    "checkpoint_every": 2,
    "log_every": 2,
    "eval_every": 0,
    "model.decoder_intermediate_size": 64,
    **extra,
  }
  return [f"--config.{k}={v}" for k, v in values.items()]


# The shared run's keys beyond `training_overrides`: an evaluation at steps 3 and 6 and a warm-up, for
# the log tests; the guard tests resume copies of it with these same keys.
SHARED_RUN = {"eval_every": 3, "eval_images": 4, "optim.warmup_steps": 2}


@pytest.fixture(scope="session")
def trained_run(training_root, tmp_path_factory):
  """(workdir, overrides): one 6-step run of the synthetic recipe on `training_root` (checkpoints 2, 4, 6;
  TensorBoard logs), shared by the log, guard and bad-input tests. Tests copy it before changing it."""
  from clipseg_jax.train.recipes import load_config
  from clipseg_jax.train.trainer import train

  overrides = training_overrides(training_root, **SHARED_RUN)
  workdir = tmp_path_factory.mktemp("trained") / "run"
  train(load_config("synthetic", overrides), workdir, show_progress=False)
  return workdir, overrides


@pytest.fixture
def torch():
  """PyTorch for the tests that compare against it; they skip where it is not installed."""
  return pytest.importorskip("torch")


def write_jpeg(path, h, w, seed=0):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.random.RandomState(seed).randint(0, 256, (h, w, 3), np.uint8)).save(path)


def write_voc(manual_dir, specs=None) -> dict:
  """PASCAL VOC 2012 in its real layout (VOCdevkit/VOC2012/...): palette label PNGs with void (255)
  borders. specs: {image_id: (split, [(class, (y0, y1, x0, x1)), ...])}. Returns the label maps."""
  root = manual_dir / "VOCdevkit" / "VOC2012"
  specs = specs or {
    "2007_000001": ("train", [(5, (2, 8, 3, 9)), (15, (15, 20, 20, 30))]),
    "2007_000002": ("train", [(6, (2, 8, 3, 9)), (15, (15, 20, 20, 30))]),
    "2007_000003": ("val", [(7, (2, 8, 3, 9)), (15, (15, 20, 20, 30))]),
  }
  labels, lists = {}, {"train": [], "val": []}
  (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
  for i, (name, (split, regions)) in enumerate(specs.items()):
    write_jpeg(root / "JPEGImages" / f"{name}.jpg", 20, 30, i)
    seg = np.zeros((20, 30), np.uint8)
    for c, (y0, y1, x0, x1) in regions:
      seg[y0:y1, x0:x1] = c
    seg[10:12, :] = 255
    lab = Image.fromarray(seg, "P")
    lab.putpalette([v for c in range(256) for v in (c, 255 - c, c // 2)])
    lab.save(root / "SegmentationClass" / f"{name}.png")
    labels[name] = seg
    lists[split].append(name)
  (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
  for split, names in lists.items():
    (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(n + "\n" for n in names))
  return labels
