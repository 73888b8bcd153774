"""The training loader: grain over a referring source with the PhraseCut+ transform.

Deterministic for a seed, shuffled anew each epoch, multi-worker, sharded per host (each process
reads only its slice of the pairs), and checkpointable: `iterator.get_state()` / `set_state()`
resume with exactly the batches an uninterrupted iterator would have produced.

Batches are dicts of numpy arrays (B = batch size per host, S = image size, L = `max_length`):
  pixels         float32 [B, S, S, 3]  query image, 0..255 unrounded as the original's resize (normalise
                                       with clipseg_jax.preprocess.normalize)
  mask           float32 [B, S, S]     target (0/1)
  input_ids      int32   [B, L]        tokenised prompt (template applied), padded to L
  attention_mask int32   [B, L]
  support        float32 [B, S, S, 3]  visual prompt after prompt engineering, ImageNet-normalised
                                       (zeros, the mean colour, if none)
  text_weight    float32 [B]           w in w * text + (1 - w) * visual (1 = text only)
With `options.device_augment` the query and support crops are shipped unresized (uint8, padded by
the batch to `max_crop_side`, with their sizes: `device.RAW_KEYS`) and the masks as uint8;
`clipseg_jax.input_pipeline.device.finish`, inside the jitted step, makes the batch above.

Throughput (experiments/bench/pcplus_throughput.py): each process maps with `read_threads` threads
and reads two batches ahead (grain's defaults, 16 threads and 500 elements, made one worker 3x slower
than the same work in a plain loop), tokenization is cached per text (templated phrases repeat), and
workers write each batch into shared memory they reuse (`handoff`, `pool_slots` per worker): grain's
new segment per array per batch cost about 1.5 ms of kernel time per MB.
"""

from __future__ import annotations

import collections
import threading

from clipseg_jax.input_pipeline import handoff
from clipseg_jax.input_pipeline.pcplus import PairIndex, PCPlusOptions, PCPlusRawTransform, PCPlusTransform, padded_keys
from clipseg_jax.tokenizer import MAX_LENGTH, load_tokenizer, tokenize

_TOKENIZER_LOCK = threading.Lock()
_CACHE_LOCK = threading.Lock()
TOKEN_CACHE_SIZE = 16384  # texts kept per worker (about 10 MB of ids); PhraseCut has ~70k phrases x 10 templates


class Tokenize:
  """Text -> fixed-length ids (no recompiles downstream). The tokenizer is built in each worker."""

  def __init__(self, max_length: int = MAX_LENGTH, tokenizer_dir=None):
    self.max_length, self.tokenizer_dir, self._tok = max_length, tokenizer_dir, None
    self._cache = collections.OrderedDict()  # text -> (ids, mask), least recently used first

  def __getstate__(self):
    return {"max_length": self.max_length, "tokenizer_dir": self.tokenizer_dir, "_tok": None}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._cache = collections.OrderedDict()

  def encode(self, text: str):
    """(ids, mask) int32 [L] of one text, cached (the arrays are shared: callers must not write them)."""
    with _CACHE_LOCK:
      hit = self._cache.get(text)
      if hit is not None:
        self._cache.move_to_end(text)
        return hit
    if self._tok is None:
      with _TOKENIZER_LOCK:  # grain maps in threads; transformers' lazy imports are not thread-safe
        if self._tok is None:
          self._tok = load_tokenizer(self.tokenizer_dir)
    ids, mask = tokenize(self._tok, [text], self.max_length)
    with _CACHE_LOCK:
      self._cache[text] = hit = (ids[0], mask[0])
      if len(self._cache) > TOKEN_CACHE_SIZE:
        self._cache.popitem(last=False)
    return hit

  def __call__(self, sample: dict) -> dict:
    sample["input_ids"], sample["attention_mask"] = self.encode(sample.pop("text"))
    return sample


def make_loader(
  source,
  options: PCPlusOptions,
  *,
  batch_size: int,
  seed: int,
  shuffle: bool = True,
  num_epochs: int | None = None,
  worker_count: int = 0,
  shard_index: int = 0,
  shard_count: int = 1,
  keep=None,
  max_length: int = MAX_LENGTH,
  tokenizer_dir=None,
  drop_remainder: bool = True,
  read_threads: int = 1,
  worker_buffer: int = 2,
  pool_slots: int | None = None,
):
  """A grain IterDataset of batches; `iter(...)` gives a checkpointable iterator. `read_threads`:
  threads mapping samples in each process (the main one without workers), `worker_buffer`: batches
  each worker keeps ready, `pool_slots`: batches per worker in reused shared memory
  (`handoff.Batcher`, with at most one read thread; None: `worker_buffer` + 4, 0: grain's per-batch
  segments). None of them changes the batches."""
  import grain

  index = PairIndex(source, keep)
  if len(index) < shard_count:
    raise ValueError(f"{len(index)} pairs cannot be split over {shard_count} hosts")
  ds = grain.MapDataset.range(len(index))[shard_index::shard_count]
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs)
  transform = (PCPlusRawTransform if options.device_augment else PCPlusTransform)(source, index, options)
  pad = padded_keys(options) if options.device_augment else {}
  tail = dict(worker_count=worker_count, read_threads=read_threads, worker_buffer=worker_buffer, pool_slots=pool_slots)
  return _batched(ds, transform, pad, batch_size, seed, max_length, tokenizer_dir, drop_remainder, **tail)


def make_episode_loader(
  transform,
  *,
  batch_size: int,
  seed: int,
  worker_count: int = 0,
  shard_index: int = 0,
  shard_count: int = 1,
  max_length: int = MAX_LENGTH,
  tokenizer_dir=None,
  read_threads: int = 1,
  worker_buffer: int = 2,
  pool_slots: int | None = None,
):
  """`make_loader` for an episodic transform (`input_pipeline.episodes`): (index, rng) -> sample, where the
  index only seeds the sample (every sample is a fresh episode); `len(transform)` samples an epoch."""
  import grain

  if len(transform) < shard_count:
    raise ValueError(f"{len(transform)} episodes per epoch cannot be split over {shard_count} hosts")
  ds = grain.MapDataset.range(len(transform))[shard_index::shard_count].shuffle(seed=seed).repeat(None)
  tail = dict(worker_count=worker_count, read_threads=read_threads, worker_buffer=worker_buffer, pool_slots=pool_slots)
  return _batched(ds, transform, {}, batch_size, seed, max_length, tokenizer_dir, True, **tail)


def _batched(
  ds,
  transform,
  pad,
  batch_size,
  seed,
  max_length,
  tokenizer_dir,
  drop_remainder,
  *,
  worker_count,
  read_threads,
  worker_buffer,
  pool_slots,
):
  """The shared tail: the per-sample random transform, tokenization, batching into reused shared memory,
  read-ahead and worker processes."""
  import grain

  ds = ds.random_map(transform, seed=seed + 1)
  ds = ds.map(Tokenize(max_length, tokenizer_dir))
  if pool_slots is None:
    # the worker's queue, the batch being written, and up to three held by the trainer
    pool_slots = worker_buffer + 4
  # One thread making a worker's batches keeps them in the order grain delivers them, which the
  # slots' reclaiming relies on (handoff.open_batch).
  pooled = worker_count > 0 and pool_slots > 0 and read_threads <= 1 and handoff.supported()
  batcher = handoff.Batcher(pool_slots if pooled else 0, pad)
  ds = ds.batch(batch_size, drop_remainder=drop_remainder, batch_fn=batcher)
  # A small read-ahead: grain's default (500 elements per process) held ~1 GB of float32 samples per
  # worker and halved its throughput; two batches keep the workers busy.
  ahead = 2 * batch_size if read_threads else 0
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=ahead))
  if worker_count > 0:
    from absl import flags

    if not flags.FLAGS.is_parsed():  # grain workers read absl flags
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count, per_worker_buffer_size=worker_buffer))
    if pooled:
      it = it.map(handoff.open_batch)
  return it
