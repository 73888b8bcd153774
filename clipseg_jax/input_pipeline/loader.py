"""The training loader: grain over a referring source with the PhraseCut+ transform.

Deterministic for a seed, shuffled anew each epoch, multi-worker, sharded per host (each process
reads only its slice of the pairs), and checkpointable: `iterator.get_state()` / `set_state()`
resume with exactly the batches an uninterrupted iterator would have produced.

Batches are dicts of numpy arrays (B = batch size per host, S = image size, L = `max_length`):
  pixels         uint8   [B, S, S, 3]  query image (normalise with clipseg_jax.preprocess.normalize)
  mask           float32 [B, S, S]     target (0/1)
  input_ids      int32   [B, L]        tokenised prompt (template applied), padded to L
  attention_mask int32   [B, L]
  support        float32 [B, S, S, 3]  visual prompt after prompt engineering, ImageNet-normalised
                                       (zeros, the mean colour, if none)
  text_weight    float32 [B]           w in w * text + (1 - w) * visual (1 = text only)
"""

from __future__ import annotations

import threading

from clipseg_jax.input_pipeline.pcplus import PairIndex, PCPlusOptions, PCPlusTransform
from clipseg_jax.tokenizer import MAX_LENGTH, load_tokenizer, tokenize

_TOKENIZER_LOCK = threading.Lock()


class Tokenize:
  """Text -> fixed-length ids (no recompiles downstream). The tokenizer is built in each worker."""

  def __init__(self, max_length: int = MAX_LENGTH, tokenizer_dir=None):
    self.max_length, self.tokenizer_dir, self._tok = max_length, tokenizer_dir, None

  def __getstate__(self):
    return {"max_length": self.max_length, "tokenizer_dir": self.tokenizer_dir, "_tok": None}

  def __call__(self, sample: dict) -> dict:
    if self._tok is None:
      with _TOKENIZER_LOCK:  # grain maps in threads; transformers' lazy imports are not thread-safe
        if self._tok is None:
          self._tok = load_tokenizer(self.tokenizer_dir)
    ids, mask = tokenize(self._tok, [sample.pop("text")], self.max_length)
    sample["input_ids"], sample["attention_mask"] = ids[0], mask[0]
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
):
  """A grain IterDataset of batches; `iter(...)` gives a checkpointable iterator."""
  import grain

  index = PairIndex(source, keep)
  if len(index) < shard_count:
    raise ValueError(f"{len(index)} pairs cannot be split over {shard_count} hosts")
  ds = grain.MapDataset.range(len(index))[shard_index::shard_count]
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs)
  ds = ds.random_map(PCPlusTransform(source, index, options), seed=seed + 1)
  ds = ds.map(Tokenize(max_length, tokenizer_dir))
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  it = ds.to_iter_dataset()
  if worker_count > 0:
    from absl import flags

    if not flags.FLAGS.is_parsed():  # grain workers read absl flags
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return it
