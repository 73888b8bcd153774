"""Batches handed from grain workers to the training process through memory allocated once.

grain's workers put each array of each batch in a new shared-memory segment, which the kernel
allocates, zeroes and frees again page by page: on a 2-core VM that costs about 1.5 ms per MB, more
than decoding a sample's two JPEGs (experiments/bench/pcplus_throughput.py). `PooledBatch`, grain's
batch function, writes a batch into one of a few slots of a per-worker memfd instead, whose pages
stay allocated, and sends a small `Handle`; `open_batch`, mapped over the workers' output in the
training process, maps the memfd (once per worker) and returns numpy views of the slot. A slot is
written again only after every view of it has been garbage collected (device_put's references
included). With no free slot (the consumer holds them all) or off Linux, grain's own path is used:
the batches are the same either way.
"""

from __future__ import annotations

import ctypes
import dataclasses
import mmap
import os
import sys
import threading
import weakref

import numpy as np

HEADER_BYTES = mmap.PAGESIZE  # one int64 word per slot, then the slots (page-aligned)
ALIGN = 64  # each array of a slot starts on a cache line
# A slot's word is seq * 4 + state, written in one aligned 8-byte store (no torn reads). States:
FREE, WRITTEN, OPENED = 0, 1, 2  # worker: FREE -> WRITTEN; trainer: WRITTEN -> OPENED -> FREE
MAX_SLOTS = HEADER_BYTES // 8


@dataclasses.dataclass(frozen=True)
class Handle:
  """Batch number `seq` of a worker, in slot `slot` of its memfd (process `pid`, descriptor `fd`,
  inode `inode`, `size` bytes mapped whole)."""

  pid: int
  fd: int
  inode: int
  size: int
  slot: int
  slot_bytes: int
  seq: int
  layout: tuple[tuple[str, int, tuple[int, ...], str], ...]  # (key, offset in the slot, shape, dtype)


def supported() -> bool:
  """memfd_create and /proc/PID/fd (how the training process reaches a worker's memory): Linux."""
  return sys.platform.startswith("linux") and hasattr(os, "memfd_create")


def _layout(values: list) -> tuple[tuple, int] | None:
  """((key, offset, shape, dtype), ...) and bytes of a batch of flat dicts of same-shaped arrays;
  None for anything else (grain's batching handles it)."""
  if not values or not all(isinstance(v, dict) and v.keys() == values[0].keys() for v in values):
    return None
  layout, offset = [], 0
  for key, first in values[0].items():
    if not isinstance(first, (np.ndarray, np.generic)) or first.dtype.hasobject or first.dtype.kind in "US":
      return None
    if any(np.shape(v[key]) != first.shape or np.asarray(v[key]).dtype != first.dtype for v in values):
      return None
    layout.append((key, offset, (len(values), *first.shape), first.dtype.str))
    offset += -(-first.nbytes * len(values) // ALIGN) * ALIGN
  return tuple(layout), offset


def _words(mm: mmap.mmap, slots: int) -> np.ndarray:
  return np.ndarray((slots,), np.int64, buffer=mm, offset=0)


class PooledBatch:
  """grain `batch_fn`: np.stack per key. In a grain worker each batch goes into a free slot of the
  worker's memfd and a `Handle` is returned; elsewhere, for other samples or with every slot held,
  grain's `make_batch`."""

  def __init__(self, slots: int):
    if not 1 <= slots <= MAX_SLOTS:
      raise ValueError(f"PooledBatch takes 1 to {MAX_SLOTS} slots, got {slots}")
    self.slots = slots
    self._shared = False
    self._pool = None  # (mmap, fd, inode, slot_bytes) once the first batch is written
    self._seq = 0

  def __getstate__(self):
    return {"slots": self.slots}

  def __setstate__(self, state):
    # Unpickled: in a grain worker (the loader uses PooledBatch only with workers). grain calls
    # `enable_shared_memory_output` only when the batch is the worker's last transform; here a
    # prefetch follows it.
    self.__init__(state["slots"])
    self._shared = True

  def enable_shared_memory_output(self):
    self._shared = True

  def _fallback(self, values):
    from grain._src.python.dataset.transformations.batch import make_batch

    return make_batch(values, output_to_shared_memory=self._shared)

  def _memory(self, nbytes: int):
    if self._pool is None:
      slot_bytes = -(-nbytes // mmap.PAGESIZE) * mmap.PAGESIZE
      fd = os.memfd_create("clipseg-jax-batches")
      size = HEADER_BYTES + self.slots * slot_bytes
      os.ftruncate(fd, size)
      self._pool = (mmap.mmap(fd, size), fd, os.fstat(fd).st_ino, slot_bytes)
    return self._pool

  def __call__(self, values):
    spec = _layout(values) if self._shared and supported() else None
    if spec is None:
      return self._fallback(values)
    layout, nbytes = spec
    mm, fd, inode, slot_bytes = self._memory(nbytes)
    words = _words(mm, self.slots)
    free = np.flatnonzero(words % 4 == FREE)
    if nbytes > slot_bytes or not len(free):  # a larger batch than the first, or every slot held
      return self._fallback(values)
    slot = int(free[0])
    start = HEADER_BYTES + slot * slot_bytes
    for key, offset, shape, dtype in layout:
      out = np.ndarray(shape, np.dtype(dtype), buffer=mm, offset=start + offset)
      np.stack([v[key] for v in values], out=out)
    self._seq += 1
    words[slot] = self._seq * 4 + WRITTEN
    return Handle(os.getpid(), fd, inode, len(mm), slot, slot_bytes, self._seq, layout)


_MAPS: dict[tuple[int, int, int], mmap.mmap] = {}  # (pid, fd, inode) -> the worker's memfd, mapped
_MAPS_LOCK = threading.Lock()


def _alive(key) -> bool:
  pid, fd, inode = key
  try:
    return os.stat(f"/proc/{pid}/fd/{fd}").st_ino == inode
  except OSError:
    return False


def _mapping(handle: Handle) -> mmap.mmap:
  key = (handle.pid, handle.fd, handle.inode)
  with _MAPS_LOCK:
    mm = _MAPS.get(key)
    if mm is None:
      for old in [k for k in _MAPS if not _alive(k)]:  # workers gone: views still alive keep theirs
        del _MAPS[old]
      path = f"/proc/{handle.pid}/fd/{handle.fd}"
      try:
        fd = os.open(path, os.O_RDWR)
      except OSError as e:
        raise OSError(
          f"cannot open a loader worker's batch memory {path} ({e.strerror}); set "
          "data.pool_slots=0 to hand batches over in grain's per-batch shared memory instead"
        ) from e
      try:
        mm = _MAPS[key] = mmap.mmap(fd, handle.size)
      finally:
        os.close(fd)
    return mm


def _release(words: np.ndarray, slot: int):
  words[slot] = FREE


def open_batch(batch):
  """A worker's output as a dict of numpy arrays: a `Handle` becomes views of its slot (no copy),
  released when the last view is garbage collected; anything else is returned as it is."""
  if not isinstance(batch, Handle):
    return batch
  mm = _mapping(batch)
  words = _words(mm, MAX_SLOTS)  # words past the pool's slots stay FREE
  # grain hands each worker's batches over in order, so a slot still WRITTEN with an earlier number
  # held a batch that grain dropped (a set_state clears the queues): free it.
  pending = words % 4 == WRITTEN
  stale = np.flatnonzero(pending & (words // 4 < batch.seq))
  words[stale] = FREE
  words[batch.slot] = batch.seq * 4 + OPENED
  start = HEADER_BYTES + batch.slot * batch.slot_bytes
  # A ctypes array over the slot owns the views: numpy keeps it alive while any view lives, and its
  # finalizer frees the slot only after the last one is gone.
  owner = (ctypes.c_char * batch.slot_bytes).from_buffer(mm, start)
  weakref.finalize(owner, _release, words, batch.slot)
  data = np.frombuffer(owner, np.uint8)
  out = {}
  for key, offset, shape, dtype in batch.layout:
    dt = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    out[key] = data[offset : offset + count * dt.itemsize].view(dt).reshape(shape)
  return out
