"""Batches handed from loader workers through reused shared memory (input_pipeline/handoff.py)."""

import ctypes
import gc
import pickle

import numpy as np
import pytest

from clipseg_jax.input_pipeline import handoff
from clipseg_jax.input_pipeline.loader import make_loader
from clipseg_jax.input_pipeline.pcplus import PCPlusOptions

pytestmark = pytest.mark.skipif(not handoff.supported(), reason="memfd and /proc/PID/fd are Linux's")


def samples(n, seed):
  rng = np.random.default_rng(seed)
  return [
    {
      "pixels": rng.integers(0, 256, (5, 7, 3), dtype=np.uint8),
      "hw": np.array([5, 7], np.int32),
      "weight": np.float32(rng.random()),
      "flag": np.bool_(i % 2),
    }
    for i in range(n)
  ]


def in_worker(slots):
  """A Batcher as grain's workers get it: unpickled."""
  return pickle.loads(pickle.dumps(handoff.Batcher(slots)))


def assert_batch(batch, values):
  assert batch.keys() == values[0].keys()
  for k in batch:
    expected = np.stack([v[k] for v in values])
    assert batch[k].dtype == expected.dtype and np.array_equal(batch[k], expected), k


def in_a_slot(array) -> bool:
  """Whether `array` is a view of a worker's slot (its memory owned by open_batch's ctypes array)."""
  while isinstance(array, np.ndarray):
    array = array.base
  return isinstance(array, ctypes.Array)


def state(handle):
  mm = handoff._mapping(handle)
  return int(handoff._words(mm, handoff.MAX_SLOTS)[handle.slot] % 4)


def test_batches_come_back_equal_and_slots_are_reused_after_release():
  batch_fn = in_worker(2)
  v1, v2, v3 = samples(4, 0), samples(4, 1), samples(4, 2)
  h1 = batch_fn(v1)
  assert isinstance(h1, handoff.Handle) and state(h1) == handoff.WRITTEN
  b1 = handoff.open_batch(h1)
  assert_batch(b1, v1)
  assert state(h1) == handoff.OPENED
  h2 = batch_fn(v2)
  assert h2.slot != h1.slot and h2.seq == h1.seq + 1
  b2 = handoff.open_batch(h2)
  # Both slots held: a new buffer (grain copies it to shared memory), the same values.
  fallback = batch_fn(v3)
  assert not isinstance(fallback, handoff.Handle)
  assert_batch(fallback, v3)
  # A view of a view keeps its slot: nothing may overwrite what a step may still read.
  pixels = b1["pixels"][1:]
  del b1
  gc.collect()
  assert state(h1) == handoff.OPENED
  assert isinstance(batch_fn(v3), dict)  # still no free slot
  del pixels
  gc.collect()
  assert state(h1) == handoff.FREE
  h3 = batch_fn(v3)
  assert isinstance(h3, handoff.Handle) and h3.slot == h1.slot
  assert_batch(handoff.open_batch(h3), v3)
  assert_batch(b2, v2)  # untouched by the slot's reuse


def test_dropped_batches_free_their_slots():
  """grain drops queued batches on set_state; the next batch opened frees their slots."""
  batch_fn = in_worker(3)
  dropped = [batch_fn(samples(2, s)) for s in range(2)]
  assert all(state(h) == handoff.WRITTEN for h in dropped)
  values = samples(2, 7)
  batch = handoff.open_batch(batch_fn(values))
  assert all(state(h) == handoff.FREE for h in dropped)
  assert_batch(batch, values)


def test_padded_keys_are_placed_top_left_with_zeros_around():
  """Each padded sample top-left, zeros elsewhere, also in a reused slot whose previous samples were
  larger on some axes and smaller on others (only what they leave behind is cleared)."""
  rng = np.random.default_rng(0)
  reused = in_worker(1)
  for step, shapes in enumerate([[(3, 5), (6, 2), (0, 0)], [(6, 6), (2, 6), (4, 1)], [(1, 6), (6, 1), (0, 0)]] * 2):
    values = [{"crop": rng.integers(1, 256, (h, w, 3), dtype=np.uint8), "n": np.int32(h)} for h, w in shapes]
    for batch_fn in (handoff.Batcher(pad={"crop": (6, 6, 3)}), reused):
      batch_fn.pad = {"crop": (6, 6, 3)}
      handle = batch_fn(values)
      assert isinstance(handle, handoff.Handle) == (batch_fn is reused)
      out = handoff.open_batch(handle)
      assert out["crop"].shape == (3, 6, 6, 3) and out["n"].tolist() == [h for h, _ in shapes]
      for row, v in zip(out["crop"], values):
        h, w = v["crop"].shape[:2]
        assert np.array_equal(row[:h, :w], v["crop"]) and row.sum() == v["crop"].sum(), step
      del out, row
      gc.collect()  # the slot is free again
  with pytest.raises(ValueError, match="does not fit"):
    handoff.Batcher(pad={"crop": (4, 4, 3)})(values)


def test_other_batches_and_the_main_process_use_grains_batching():
  ragged = [{"a": np.zeros(2)}, {"a": np.zeros(3)}]
  with pytest.raises(ValueError):
    in_worker(2)(ragged)  # np.stack refuses it, as grain's batching did
  assert_batch(handoff.Batcher(2)(samples(3, 0)), samples(3, 0))  # not in a worker: plain numpy
  texts = [{"text": np.array("a")}, {"text": np.array("b")}]
  assert not isinstance(in_worker(2)(texts), handoff.Handle)
  assert handoff.open_batch({"x": 1}) == {"x": 1}
  with pytest.raises(TypeError, match="dicts of arrays"):
    handoff.Batcher()([(1, 2), (3, 4)])
  with pytest.raises(ValueError, match="slots"):
    handoff.Batcher(-1)


class ImageSource:
  """A referring source of random images and box masks."""

  def __init__(self, n=10, size=(40, 56)):
    rng = np.random.RandomState(0)
    self.records = []
    for i in range(n):
      m = np.zeros(size, bool)
      m[5 : 5 + 8 + i, 9 : 20 + i] = True
      image = rng.randint(0, 256, size + (3,), np.uint8)
      self.records.append({"image": image, "image_id": str(i), "phrases": [f"thing {i % 3}"], "masks": [m]})

  def __len__(self):
    return len(self.records)

  def phrases(self, i):
    return self.records[i]["phrases"]

  def __getitem__(self, i):
    return self.records[i]


@pytest.mark.slow  # spawns grain workers (about 30 s)
def test_workers_hand_over_pooled_batches_equal_to_grains_and_resume():
  source, opts = ImageSource(), PCPlusOptions(image_size=24, device_augment=True, max_crop_side=48)
  kwargs = dict(batch_size=3, seed=5, worker_count=2)

  def take(loader, n, state=None):
    it = iter(loader)
    if state is not None:
      it.set_state(state)
    out = [{k: np.array(v) for k, v in next(it).items()} for _ in range(n)]
    return out, it

  plain, _ = take(make_loader(source, opts, pool_slots=0, **kwargs), 6)
  pooled = make_loader(source, opts, **kwargs)
  it = iter(pooled)
  held = [next(it) for _ in range(8)]  # more than a worker's slots: the rest come through grain's path
  for got, want in zip(held, plain):
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in got)
  assert sum(in_a_slot(b["pixels"]) for b in held) >= 6
  first, it = take(pooled, 3)
  rest, _ = take(pooled, 3, it.get_state())
  for got, want in zip(first + rest, plain):
    assert all(np.array_equal(got[k], want[k]) for k in got)
