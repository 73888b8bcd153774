"""The device half of the PhraseCut+ pipeline (input_pipeline/device.py) against the host path, and the
loader's raw batches: same seed, same batches, exact resume, disjoint shards."""

import dataclasses
import io
import re

import jax
import numpy as np
import pytest
from PIL import Image
from test_pcplus import MemorySource, assert_same, batches

from clipseg_jax import preprocess, prompts
from clipseg_jax.input_pipeline import device, handoff
from clipseg_jax.input_pipeline.loader import make_loader
from clipseg_jax.input_pipeline.pcplus import (
  PairIndex,
  PCPlusOptions,
  PCPlusRawTransform,
  PCPlusTransform,
  padded_keys,
)

SIZE = 32
CROP = 48  # MemorySource's crops are 48 px (its images 48 x 64): all resized on the device


def pairs_of_both_paths(opts, n=60, seed=0, source=None):
  """(host samples, raw samples) for the same pair ids and the same random streams."""
  source = source or MemorySource()
  index = PairIndex(source)
  host, raw = PCPlusTransform(source, index, opts), PCPlusRawTransform(source, index, opts)
  ids = [i % len(index) for i in range(n)]
  a = [host(i, np.random.default_rng([seed, k])) for k, i in enumerate(ids)]
  b = [raw(i, np.random.default_rng([seed, k])) for k, i in enumerate(ids)]
  return a, b


def stack_samples(samples, opts):
  """Samples of either path batched as the loader does (texts left out): the device path's crops padded
  to the buffer."""
  batcher = handoff.Batcher(pad=padded_keys(opts) if opts.device_augment else {})
  return batcher([{k: v for k, v in s.items() if k != "text"} for s in samples])


def stack_raw(samples, opts):
  """Raw samples batched as the loader does: crops padded to the buffer."""
  return stack_samples(samples, dataclasses.replace(opts, device_augment=True))


@pytest.mark.parametrize("mode", ["crop_blur_highlight", "crop_blur_highlight24", "blur_highlight", "highlight"])
def test_device_equals_host(mode):
  """Same draws: masks exactly; pixels to float32 rounding (two evaluation orders of the same
  bilinear weights), supports too (and the host blurs in float64)."""
  opts = PCPlusOptions(image_size=SIZE, prompt_mode=mode, max_crop_side=CROP)
  host, raw = pairs_of_both_paths(opts)
  out = jax.jit(lambda b: device.finish(b, mode, SIZE))(stack_raw(raw, opts))
  want = stack_samples(host, opts)
  np.testing.assert_allclose(np.asarray(out["pixels"]), want["pixels"], atol=1e-4, rtol=0)
  np.testing.assert_array_equal(np.asarray(out["mask"]), want["mask"])
  assert out["mask"].dtype == out["pixels"].dtype == out["support"].dtype == np.float32
  np.testing.assert_allclose(np.asarray(out["support"]), want["support"], atol=2e-5, rtol=0)
  has = want["support"].reshape(len(host), -1).any(1)
  assert 0 < has.mean() < 1 and np.array_equal([r["has_support"] for r in raw], has)
  assert set(out) == set(want)


def test_crops_over_the_buffer_are_resized_on_the_host():
  """Crops larger than `max_crop_side` ship resized and rounded (side = image size): the device keeps
  them exactly, within 0.5 of the host path's float pixels."""
  opts = PCPlusOptions(image_size=SIZE, max_crop_side=40)
  host, raw = pairs_of_both_paths(opts, n=20)
  assert all(r["pixels"].shape == (SIZE, SIZE, 3) and list(r["pixels_hw"]) == [SIZE, SIZE] for r in raw)
  out = jax.jit(lambda b: device.finish(b, opts.prompt_mode, SIZE))(stack_raw(raw, opts))
  np.testing.assert_array_equal(np.asarray(out["pixels"]), stack_raw(raw, opts)["pixels"][:, :SIZE, :SIZE])
  assert np.abs(np.asarray(out["pixels"]) - stack_samples(host, opts)["pixels"]).max() <= 0.5 + 1e-4


@pytest.mark.parametrize("hw", [(48, 48), (32, 32), (17, 60), (64, 64), (1, 1), (5, 64), (64, 3)])
def test_device_resize_equals_host_resize(hw):
  """Crops of every shape in a 64 px buffer whose padding is 255 (never read): `preprocess.resize_aligned`;
  at the image size exactly the identity."""
  h, w = hw
  image = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), np.uint8)
  buffer = np.full((64, 64, 3), 255, np.uint8)
  buffer[:h, :w] = image
  out = np.asarray(jax.jit(device.resize_aligned, static_argnums=2)(buffer, np.array(hw, np.int32), SIZE))
  np.testing.assert_allclose(out, preprocess.resize_aligned(image, SIZE), atol=1e-4, rtol=0)
  if hw == (SIZE, SIZE):
    np.testing.assert_array_equal(out, image)


@pytest.mark.parametrize("size", [352, 224, 24])
def test_device_indices_are_the_hosts_for_every_side(size):
  """Every crop side and box side up to 600: the same bilinear taps and nearest indices as the host
  (torch's float32 rounding; XLA's reciprocal for a constant divisor flipped some)."""
  sides = np.arange(1, 601, dtype=np.int32)
  taps = jax.jit(jax.vmap(lambda n: device.aligned_taps(n, size)))(sides)
  nearest = jax.jit(jax.vmap(lambda n: device.nearest_indices(n, size)))(sides)
  for n in sides:
    lo, hi, w = preprocess.aligned_taps(int(n), size)
    got = [np.asarray(t[n - 1]) for t in taps]
    np.testing.assert_array_equal(got[0], lo)
    np.testing.assert_array_equal(got[1], hi)
    np.testing.assert_array_equal(got[2], w)
    np.testing.assert_array_equal(np.asarray(nearest[n - 1]), prompts.nearest_indices(int(n), size))


def test_crop_pad_resize_matches_prompts_on_odd_boxes():
  """Boxes of every shape (tall, wide, one pixel, the whole image) crop, pad and resize like the host."""
  rng = np.random.default_rng(0)
  image = rng.normal(size=(20, 20, 3)).astype(np.float32)
  fn = jax.jit(device.crop_pad_resize, static_argnums=2)
  for box in [(0, 0, 20, 20), (3, 5, 4, 6), (2, 0, 19, 7), (6, 1, 9, 20), (0, 13, 20, 20)]:
    t, left, b, r = box
    want = prompts.resize_nearest(prompts.pad_square(image[t:b, left:r]), 24)
    np.testing.assert_array_equal(np.asarray(fn(image, np.array(box, np.int32), 24)), want)


def test_device_blur_is_opencv_recipe():
  image = np.random.default_rng(1).normal(size=(40, 33, 3)).astype(np.float32)
  np.testing.assert_allclose(
    np.asarray(jax.jit(lambda x: device.gaussian_blur(x, 3.0))(image)), prompts.gaussian_blur(image, 3.0), atol=2e-6
  )


def test_raw_batches_are_uint8_and_smaller():
  opts = PCPlusOptions(image_size=SIZE, device_augment=True, max_crop_side=CROP)
  (b,), _ = batches(make_loader(MemorySource(), opts, batch_size=4, seed=0), 1)
  assert b["pixels"].dtype == b["mask"].dtype == b["support_pixels"].dtype == np.uint8
  assert b["pixels"].shape == (4, CROP, CROP, 3) and b["pixels_hw"].shape == b["support_hw"].shape == (4, 2)
  assert b["support_box"].shape == (4, 4) and b["has_support"].dtype == bool
  host_opts = PCPlusOptions(image_size=SIZE)
  (h,), _ = batches(make_loader(MemorySource(), host_opts, batch_size=4, seed=0), 1)
  assert sum(v.nbytes for v in b.values()) < 0.6 * sum(v.nbytes for v in h.values())
  out = device.finish(b, opts.prompt_mode, SIZE)  # the loader's batches are the host path's, finished
  np.testing.assert_allclose(np.asarray(out["pixels"]), h["pixels"], atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.asarray(out["support"]), h["support"], atol=2e-5)


def test_raw_loader_resume_and_seed():
  source, opts = MemorySource(n=12), PCPlusOptions(image_size=16, device_augment=True, max_crop_side=CROP)
  loader = make_loader(source, opts, batch_size=4, seed=3)
  straight, _ = batches(loader, 9)  # 24 pairs = 6 batches: crosses an epoch
  first, it = batches(loader, 4)
  resumed, _ = batches(loader, 5, it.get_state())
  assert_same(first + resumed, straight)
  # Same seed, same batches, however many threads map them.
  assert_same(batches(make_loader(source, opts, batch_size=4, seed=3, read_threads=0), 9)[0], straight)
  other, _ = batches(make_loader(source, opts, batch_size=4, seed=4), 1)
  assert not np.array_equal(other[0]["pixels"], straight[0]["pixels"])


def test_raw_loader_shards_are_disjoint():
  source = MemorySource(n=20)
  opts = PCPlusOptions(
    image_size=16, augment=False, q_neg=0.0, templates=("{}",), device_augment=True, max_crop_side=64
  )
  seen = []
  for shard in range(2):
    loader = make_loader(source, opts, batch_size=4, seed=0, num_epochs=1, shard_index=shard, shard_count=2)
    seen.append({(x.tobytes(), i.tobytes()) for b in loader for x, i in zip(b["pixels"], b["input_ids"])})
  assert len(seen[0]) == len(seen[1]) == 20 and not seen[0] & seen[1]


def test_device_mode_rejects_non_square_blends():
  with pytest.raises(ValueError, match="device_augment: prompt mode 'highlight24'"):
    device.check_mode("highlight24", SIZE)


def jpeg(array, quality=95) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, "JPEG", quality=quality)
  return buf.getvalue()


@pytest.mark.slow  # two short training runs in subprocesses (~1 min)
def test_training_with_device_augment_matches_host_path(training_root, tmp_path):
  """`data.pcplus.device_augment=True` with a loader worker trains the same decoder as the host path
  in-process (supports equal to float32 rounding), through the trainer's wrapped stream step."""
  import os
  import subprocess
  import sys

  from conftest import training_overrides

  from clipseg_jax import load_model

  def run(workdir, flag):
    # The device path through a grain worker and the reused shared-memory slots; the host path in-process.
    extra = {"data.pcplus.augment": True, "data.pcplus.visual_prompts": True, "data.workers": int(flag)}
    extra["data.pcplus.device_augment"] = flag
    cmd = [sys.executable, "-m", "clipseg_jax.cli.main", "train", "--config", "synthetic", "--workdir", str(workdir)]
    out = subprocess.run(
      cmd + training_overrides(training_root, **extra), capture_output=True, text=True, env=os.environ
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return jax.tree.leaves(jax.tree.map(np.asarray, load_model(workdir).params["decoder"]))

  host, dev = run(tmp_path / "host", False), run(tmp_path / "device", True)
  num = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(dev, host)))
  assert num / np.sqrt(sum(np.sum(b**2) for b in host)) < 1e-4


def bench(module: str, *args: str) -> str:
  """Run a benchmark module from the checkout (experiments/ is not part of the package)."""
  import os
  import subprocess
  import sys
  from pathlib import Path

  root = Path(__file__).resolve().parents[1]
  env = {**os.environ, "PYTHONPATH": str(root)}
  out = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=root, env=env)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
  return out.stdout


@pytest.mark.slow  # compiles the full ViT-B/16 step (tiny images) and spawns a grain worker
@pytest.mark.nightly  # a benchmark's smoke run: the step and the loader it times are tested on their own
def test_train_step_end_to_end_bench_runs_on_cpu():
  out = bench("experiments.bench.train_step", "--end-to-end", "--size", "64", "--batch", "8", "--steps", "2")
  assert "step alone" in out and "end to end / step alone" in out and "images/s" in out


def test_throughput_bench_prints_one_line_per_worker_count():
  args = ("--n", "16", "--size", "32", "--workers", "0", "--source-size", "60", "80", "--breakdown", "--records", "300")
  out = bench("experiments.bench.pcplus_throughput", *args)
  lines = re.findall(r"^grain loader, 0 worker\(s\): [\d.]+ samples/s", out, re.M)
  assert len(lines) == 4 and "prompt engineering" in out and "device.finish" in out  # every path
  assert "reused slot" in out
  assert "align_corners=True" in out and "load average" in out


def test_lazily_decoded_records_give_the_same_samples():
  """Records carrying JPEG bytes (decoded after the crop is drawn) give the samples of the decoded records
  when the crop allows no reduced-scale decode (48 px crops to 32 px)."""
  eager, lazy = MemorySource(n=12), MemorySource(n=12)
  for e, r in zip(eager.records, lazy.records):
    r["image_bytes"] = jpeg(r.pop("image"))
    e["image"] = np.asarray(Image.open(io.BytesIO(r["image_bytes"])).convert("RGB"))
  opts = PCPlusOptions(image_size=SIZE)
  a, _ = pairs_of_both_paths(opts, n=24, source=eager)
  b, _ = pairs_of_both_paths(opts, n=24, source=lazy)
  assert_same(
    [{k: v for k, v in s.items() if k != "text"} for s in a], [{k: v for k, v in s.items() if k != "text"} for s in b]
  )
