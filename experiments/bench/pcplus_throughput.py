"""Samples/second of the full PhraseCut+ transform at 352 px, in-process and through grain workers.

Each sample decodes two JPEGs (query and support, Visual-Genome-like 500x375 by default), draws the
object-aware crops, resizes, engineers the visual prompt (crop_blur_highlight) and tokenizes the
templated phrase. Paths, measured side by side in one run:
  host         everything on the host (align_corners=True resizes, prompt engineering), float32 shipped;
  device       `PCPlusOptions.device_augment`: uint8 crops shipped (padded to `max_crop_side` by the
               batch), their resize and the prompt engineering inside the jitted step
               (input_pipeline/device.py; its cost per sample on this CPU is in the breakdown);
  device-before  the device path as it was before the crops' resize moved to the device: every crop
               resized on the host and shipped at the image size (`max_crop_side=0`);
  device-grain-shm  the device path with grain's own hand-over (a new shared-memory segment per array
               per batch, `pool_slots=0`) instead of the reused slots of input_pipeline/handoff.py.
Workers hand batches over through reused shared memory (`data.pool_slots`) unless the path says not.
Targets on this 2-core machine: >= 250 samples/s per worker process, >= 400 with 2 workers.

  python -m experiments.bench.pcplus_throughput [--n 400] [--workers 0 1 2] [--path host device]
      [--breakdown] [--repeats 3] [--read-threads 16] [--project 16 96] [--prepared]
  (--read-threads 16: grain's default threads per process, the old loader)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from clipseg_jax import preprocess, prompts
from clipseg_jax.input_pipeline import handoff
from clipseg_jax.input_pipeline.loader import Tokenize, make_loader
from clipseg_jax.input_pipeline.pcplus import (
  PairIndex,
  PCPlusOptions,
  PCPlusRawTransform,
  PCPlusTransform,
  object_aware_crop,
  padded_keys,
  support_prompt,
)

TARGET_PER_WORKER, TARGET_TWO = 250.0, 400.0
H100_STEP = 3382.0  # images/s of the bf16 training step alone on one H100 (issue 18, train_step --gpu)


class JpegSource:
  """In-memory referring records stored as JPEG bytes: `n_records` records (3 phrases each) over
  `n_images` distinct images, so the pair index has PhraseCut's size (~300k training pairs; grain's
  index shuffle costs ~240 us a sample over 192 pairs, ~15-25 us over 300k) at the memory of 64 JPEGs.
  `lazy`: records carry `image_bytes`, decoded after the crop is drawn; otherwise decoded on access."""

  def __init__(self, n_images=64, size=(375, 500), seed=0, lazy=True, n_records=None):
    rng = np.random.RandomState(seed)
    self.items, self.lazy = [], lazy
    self.n_records = n_images if n_records is None else n_records
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]]
    for i in range(n_images):
      img = (rng.rand(3) * 255 * (0.6 + 0.4 * np.sin(xx / (7 + i % 5))[..., None])).astype(np.uint8)
      buf = io.BytesIO()
      Image.fromarray(img).save(buf, "JPEG", quality=90)
      masks = []
      for _ in range(3):
        m = np.zeros(size, bool)
        h, w = rng.randint(size[0] // 16, size[0] // 3), rng.randint(size[1] // 16, size[1] // 3)
        y, x = rng.randint(0, size[0] - h), rng.randint(0, size[1] - w)
        m[y : y + h, x : x + w] = True
        masks.append(m)
      self.items.append((buf.getvalue(), masks))

  def __len__(self):
    return self.n_records

  def phrases(self, i):
    # a few frequent phrases (like PhraseCut's "man", "window") and many rare ones
    return [f"object {i % 16}", f"thing {i % 8}", f"region {i}"]

  def __getitem__(self, i):
    (data, masks), phrases = self.items[i % len(self.items)], self.phrases(i)
    record = {"image_id": str(i), "phrases": phrases, "masks": masks}
    if self.lazy:
      return {**record, "image_bytes": data}
    return {**record, "image": np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))}


def stack_samples(samples: list[dict], opts) -> dict:
  """Samples of either path batched as the loader does (texts left out): the device path's crops padded."""
  batcher = handoff.Batcher(pad=padded_keys(opts) if opts.device_augment else {})
  return batcher([{k: v for k, v in s.items() if k != "text"} for s in samples])


def prepared_phrasecut(memory: JpegSource, root: Path):
  """`memory`'s images and (box) masks written in PhraseCut's on-disk layout, built into a prepared
  dataset (array_record) and opened as training opens it (`open_source`, records decoded on access)."""
  from clipseg_jax.input_pipeline import build, open_source

  manual = root / "manual"
  (manual / "images").mkdir(parents=True)
  splits, tasks = [], []
  for i, (data, masks) in enumerate(memory.items):
    phrases = memory.phrases(i)
    (manual / "images" / f"{i}.jpg").write_bytes(data)
    h, w = masks[0].shape
    splits.append({"image_id": i, "height": h, "width": w, "split": "train"})
    for k, (phrase, mask) in enumerate(zip(phrases, masks)):
      ys, xs = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
      x0, y0, x1, y1 = int(xs[0]), int(ys[0]), int(xs[-1]), int(ys[-1])
      box = [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]
      tasks.append({"task_id": f"{i}__{k}", "image_id": i, "phrase": phrase, "Polygons": [[box]]})
  (manual / "image_data_split.json").write_text(json.dumps(splits))
  (manual / "refer_train.json").write_text(json.dumps(tasks))
  build("phrasecut", data_dir=root / "tfds", manual_dir=manual)
  return Cycled(open_source("phrasecut", "train", data_dir=root / "tfds"), memory)


class Cycled:
  """A prepared source's records repeated to `memory`'s number of records, with its phrases."""

  def __init__(self, prepared, memory: JpegSource):
    self.prepared, self.memory = prepared, memory

  def __len__(self):
    return len(self.memory)

  def phrases(self, i):
    return self.memory.phrases(i)

  def __getitem__(self, i):
    return self.prepared[i % len(self.prepared)]


PATHS = ("host", "device", "device-before", "device-grain-shm")


def options(path: str, size: int) -> PCPlusOptions:
  if path == "device-before":  # no crop fits a 0 px buffer: all resized on the host
    return PCPlusOptions(image_size=size, device_augment=True, max_crop_side=0)
  return PCPlusOptions(image_size=size, device_augment=path.startswith("device"))


def in_process(source, opts, n):
  """A plain loop over the transform and the tokenizer (one worker's work, no grain)."""
  cls = PCPlusRawTransform if opts.device_augment else PCPlusTransform
  transform, tokenize = cls(source, PairIndex(source), opts), Tokenize()
  rng = np.random.default_rng(0)
  tokenize(transform(0, rng))  # warm up (tokenizer construction)
  t = time.perf_counter()
  for i in range(n):
    tokenize(transform(i % (3 * len(source)), rng))
  return n / (time.perf_counter() - t)


def through_grain(source, opts, n, workers, read_threads, pool_slots=None, batch=8):
  loader = make_loader(
    source, opts, batch_size=batch, seed=0, worker_count=workers, read_threads=read_threads, pool_slots=pool_slots
  )
  it = iter(loader)
  for _ in range(2):  # worker start-up, buffers filled once
    next(it)
  t = time.perf_counter()
  for _ in range(n // batch):
    next(it)
  rate = (n // batch) * batch / (time.perf_counter() - t)
  if hasattr(it, "close"):
    it.close()
  return rate


def ms(fn, repeats=30):
  """Median milliseconds of fn() (after one warm-up call)."""
  fn()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return 1e3 * statistics.median(times)


def breakdown(source, size: int, batch: int = 8) -> list[tuple[str, float, str]]:
  """(stage, ms per sample, path) for one sample's work in one process: 'both' stages run in each path."""
  import jax

  from clipseg_jax.input_pipeline import device

  opts = PCPlusOptions(image_size=size)
  raw_opts = PCPlusOptions(image_size=size, device_augment=True)
  data, masks = source.items[0]
  image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
  mask, rng = masks[0], np.random.default_rng(0)
  top, left, side = object_aware_crop(mask, rng, opts.crop_tries, opts.min_mask_fraction)
  crop, mcrop = image[top : top + side, left : left + side], mask[top : top + side, left : left + side]
  s_img, s_mask = preprocess.resize_aligned(crop, size), prompts.resize_nearest(mcrop, size)
  tok = Tokenize()
  tok.encode("warm up")
  texts = iter(f"a photo of a thing {i}." for i in range(10**6))
  host = PCPlusTransform(source, PairIndex(source), opts)
  raw = PCPlusRawTransform(source, PairIndex(source), raw_opts)
  pack = lambda t: [Tokenize()(t(i, np.random.default_rng(i))) for i in range(batch)]
  host_batch, raw_batch = pack(host), pack(raw)
  stacked = stack_samples(raw_batch, raw_opts)
  finish = jax.jit(lambda b: device.finish(b, opts.prompt_mode, size))

  def into_slot(samples, o):
    """A worker's batch written into a reused slot and opened by the consumer (handoff)."""
    pad = padded_keys(o) if o.device_augment else {}
    worker = pickle.loads(pickle.dumps(handoff.Batcher(2, pad)))  # unpickled: as in a grain worker
    return lambda: handoff.open_batch(worker(samples))

  def grain_shm(samples, o):
    """grain's hand-over of a batch that is not the worker's last transform: each array copied into a
    new shared-memory segment, mapped by the consumer and unlinked when it is done."""
    from grain._src.python.ipc.shared_memory_array import SharedMemoryArray

    def run():
      for value in stack_samples(samples, o).values():
        shm = SharedMemoryArray(value.shape, value.dtype)
        shm[...] = value
        view = SharedMemoryArray.from_metadata(shm.metadata)
        view.unlink_on_del()
        del view, shm

    return run

  rows = [
    (
      "JPEG decode, full scale (x2 per sample)",
      2 * ms(lambda: np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))),
      "both",
    ),
    ("crop search (x2)", 2 * ms(lambda: object_aware_crop(mask, rng, opts.crop_tries, opts.min_mask_fraction)), "both"),
    (
      "image resize, PIL bilinear antialiased (x2; before, not the original's)",
      2 * ms(lambda: preprocess.resize_square(crop, size)),
      "old",
    ),
    ("image resize, align_corners=True numpy (x2)", 2 * ms(lambda: preprocess.resize_aligned(crop, size)), "host"),
    ("mask resize, torch nearest (x2)", 2 * ms(lambda: prompts.resize_nearest(mcrop, size)), "both"),
    ("tokenize, uncached", ms(lambda: tok.encode(next(texts))), "old"),
    ("tokenize, cached", ms(lambda: tok.encode("a photo of a thing 3.")), "both"),
    ("support box (mask_box)", ms(lambda: prompts.mask_box(s_mask)), "device"),
    (
      "prompt engineering: normalise, blur, blend, crop, pad, resize",
      ms(lambda: support_prompt(s_img, s_mask, "crop_blur_highlight", size)),
      "host",
    ),
    ("query normalisation (numpy; the step does it on device)", ms(lambda: preprocess.normalize(s_img)), "-"),
    ("batch into new shared memory (grain's), host batch / sample", ms(grain_shm(host_batch, opts)) / batch, "host"),
    ("batch into a reused slot (handoff), host batch / sample", ms(into_slot(host_batch, opts)) / batch, "host"),
    ("batch into new shared memory (grain's), raw batch / sample", ms(grain_shm(raw_batch, raw_opts)) / batch, "-"),
    ("batch into a reused slot (handoff), raw batch / sample", ms(into_slot(raw_batch, raw_opts)) / batch, "device"),
    (
      f"device.finish under jit on {jax.devices()[0].platform} / sample",
      ms(lambda: jax.block_until_ready(finish(stacked))) / batch,
      "device (accelerator)",
    ),
  ]
  return rows


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--n", type=int, default=400, help="samples per measurement")
  p.add_argument("--size", type=int, default=352)
  p.add_argument("--source-size", type=int, nargs=2, default=(375, 500), metavar=("H", "W"))
  p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="0: in-process grain")
  p.add_argument("--path", nargs="+", default=list(PATHS), choices=PATHS)
  p.add_argument("--read-threads", type=int, default=1, help="grain threads per process (grain's default: 16)")
  p.add_argument("--breakdown", action="store_true", help="ms per stage of one sample")
  p.add_argument("--repeats", type=int, default=1, help="loader measurements per worker count (median printed)")
  p.add_argument("--records", type=int, default=100_000, help="records (3 pairs each) over the 64 images")
  p.add_argument("--eager-decode", action="store_true", help="decode whole images on access, not after the crop")
  p.add_argument(
    "--prepared", action="store_true", help="read the images through a prepared PhraseCut dataset, as training does"
  )
  p.add_argument("--project", type=int, nargs="+", default=[16, 96], metavar="CPUS", help="hosts to project onto")
  args = p.parse_args()
  source = JpegSource(size=tuple(args.source_size), lazy=not args.eager_decode, n_records=args.records)
  memory = source
  if args.prepared:
    tmp = tempfile.TemporaryDirectory()
    source = prepared_phrasecut(memory, Path(tmp.name))
  load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
  print(
    f"PC+ transform at {args.size} px, {args.source_size[1]}x{args.source_size[0]} JPEGs "
    f"({'a prepared PhraseCut dataset' if args.prepared else 'in memory'}), {os.cpu_count()} CPUs, load average {load}"
  )
  if args.breakdown:
    print("per-stage breakdown, ms per sample (median of 30), the path the stage belongs to:")
    rows = breakdown(memory, args.size)
    if args.prepared:
      read = ms(lambda: source[1]["masks"][2])
      rows.insert(0, ("prepared record: read, parse, one mask's PNG decoded (x2)", 2 * read, "both"))
    for name, value, path in rows:
      print(f"  {name:66s} {value:7.2f} ms  [{path}]")
  rates = {}
  for path in args.path:
    opts = options(path, args.size)
    if path != "device-grain-shm":  # the same work as `device` in-process
      rate = in_process(source, opts, args.n)
      print(f"plain loop, no grain (one worker's work): {rate:.1f} samples/s  [{path} path]")
    slots = 0 if path == "device-grain-shm" else None
    for workers in args.workers:
      runs = [through_grain(source, opts, args.n, workers, args.read_threads, slots) for _ in range(args.repeats)]
      rates[path, workers] = statistics.median(runs)
      spread = f" (median of {len(runs)}: {min(runs):.1f}-{max(runs):.1f})" if len(runs) > 1 else ""
      print(f"grain loader, {workers} worker(s): {rates[path, workers]:.1f} samples/s{spread}  [{path} path]")
  for path in args.path:
    one, two = rates.get((path, 1)), rates.get((path, 2))
    if one:
      projected = ", ".join(f"{c} CPUs ({c - 1} workers) {one * (c - 1):.0f}/s" for c in args.project)
      print(
        f"[{path}] 1 worker {one:.0f}/s ({one / TARGET_PER_WORKER:.2f}x the {TARGET_PER_WORKER:.0f}/s target)"
        + (f", 2 workers {two:.0f}/s ({two / TARGET_TWO:.2f}x the {TARGET_TWO:.0f}/s target)" if two else "")
        + f"; projected, linear in workers: {projected}; workers to feed one H100's "
        + f"{H100_STEP:.0f} images/s step: {H100_STEP / one:.1f}"
      )
  for other in ("host", "device-before", "device-grain-shm"):
    for workers in (1, 2):
      if (other, workers) in rates and ("device", workers) in rates:
        ratio = rates["device", workers] / rates[other, workers]
        print(f"device path / {other} path, {workers} worker(s): {ratio:.2f}x")
  print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
  main()
