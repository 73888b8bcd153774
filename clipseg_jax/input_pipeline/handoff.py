"""Batches handed from grain workers to the training process through memory allocated once.

grain's workers put each array of each batch in a new shared-memory segment, which the kernel
allocates, zeroes and frees again page by page: on a 2-core VM that costs about 1.5 ms per MB, more
than decoding a sample's two JPEGs (experiments/bench/pcplus_throughput.py). `Batcher`, grain's
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
  return sys.platform.startswith("linux") and hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")


def _layout(values: list, pad: dict) -> tuple[tuple, int] | None:
  """((key, offset, shape, dtype), ...) and bytes of a batch of flat dicts of arrays, same-shaped
  but for the keys of `pad` (placed top-left in their shape); None for anything else."""
  if not values or not all(isinstance(v, dict) and v.keys() == values[0].keys() for v in values):
    return None
  layout, offset = [], 0
  for key, first in values[0].items():
    if not isinstance(first, (np.ndarray, np.generic)) or first.dtype.hasobject or first.dtype.kind in "US":
      return None
    shape = tuple(pad.get(key, first.shape))
    for v in values:
      v = v[key]
      fits = len(v.shape) == len(shape) and all(n <= m for n, m in zip(v.shape, shape))
      if v.dtype != first.dtype or not (fits if key in pad else v.shape == shape):
        if key in pad:
          raise ValueError(f"a sample's {key!r} ({v.dtype} {v.shape}) does not fit its batch's {first.dtype} {shape}")
        return None
    layout.append((key, offset, (len(values), *shape), first.dtype.str))
    offset += -(-int(np.prod(shape, dtype=np.int64)) * first.dtype.itemsize * len(values) // ALIGN) * ALIGN
  return tuple(layout), offset


def _write(values: list, layout, buffer, start: int, pad: dict, written: dict | None = None) -> dict:
  """The batch's arrays as views of `buffer` from byte `start`, each filled from `values`; a padded
  key's samples top-left with zeros around them. `written` ({key: int [B, ndim]}) holds the extents
  each padded row of this memory had before (None: unknown), so only what they leave behind is
  zeroed; it is updated in place."""
  out = {}
  for key, offset, shape, dtype in layout:
    out[key] = array = np.ndarray(shape, np.dtype(dtype), buffer=buffer, offset=start + offset)
    if key not in pad:
      np.stack([v[key] for v in values], out=array)
      continue
    old = written.get(key) if written is not None else None
    if old is None:
      old = np.tile(shape[1:], (shape[0], 1))
    new = np.array([v[key].shape for v in values], np.int64).reshape(shape[0], len(shape) - 1)
    for row, v, was, now in zip(array, values, old, new):
      row[tuple(slice(n) for n in now)] = v[key]
      # Zero `was`'s box outside `now`'s: for each axis, the slab past `now` on it, within both boxes
      # on the axes before it and within `was` on the axes after it.
      for axis in range(len(now)):
        if was[axis] > now[axis]:
          index = [slice(min(n, m)) for n, m in zip(now[:axis], was[:axis])] + [slice(now[axis], was[axis])]
          row[tuple(index + [slice(m) for m in was[axis + 1 :]])] = 0
    if written is not None:
      written[key] = new
  return out


def _words(mm: mmap.mmap, slots: int) -> np.ndarray:
  return np.ndarray((slots,), np.int64, buffer=mm, offset=0)


class Batcher:
  """grain `batch_fn`: each key stacked, the keys of `pad` ({key: shape}) padded with zeros to their
  shape. In a grain worker each batch goes into a free slot of the worker's memfd and a `Handle` is
  returned (with every slot held: a new buffer, which grain copies to shared memory); other flat
  dicts (strings, ragged arrays) are np.stacked per key."""

  def __init__(self, slots: int = 0, pad: dict | None = None):
    if not 0 <= slots <= MAX_SLOTS:
      raise ValueError(f"a Batcher takes 0 to {MAX_SLOTS} slots, got {slots}")
    self.slots, self.pad = slots, {k: tuple(v) for k, v in (pad or {}).items()}
    self._shared = False
    self._pool = None  # (mmap, fd, inode, slot_bytes) once the first batch is written
    self._seq = 0
    self._written = {}  # slot -> (layout, {padded key: extents of the samples last written there})

  def __getstate__(self):
    return {"slots": self.slots, "pad": self.pad}

  def __setstate__(self, state):
    # Unpickled: in a grain worker (the loader hands Batchers with slots to workers only). grain
    # calls `enable_shared_memory_output` only when the batch is a worker's last transform; here a
    # prefetch follows it.
    self.__init__(**state)
    self._shared = True

  def enable_shared_memory_output(self):
    self._shared = True

  def _memory(self, nbytes: int):
    if self._pool is None:
      slot_bytes = -(-nbytes // mmap.PAGESIZE) * mmap.PAGESIZE
      fd = os.memfd_create("clipseg-jax-batches")
      size = HEADER_BYTES + self.slots * slot_bytes
      os.ftruncate(fd, size)
      self._pool = (mmap.mmap(fd, size), fd, os.fstat(fd).st_ino, slot_bytes)
    return self._pool

  def _free_slot(self, nbytes: int) -> int | None:
    if not (self._shared and self.slots and supported()):
      return None
    mm, _, _, slot_bytes = self._memory(nbytes)
    free = np.flatnonzero(_words(mm, self.slots) % 4 == FREE)
    return int(free[0]) if len(free) and nbytes <= slot_bytes else None

  def __call__(self, values):
    spec = _layout(values, self.pad)
    if spec is None:  # ragged, strings, ...: np.stack's result or its error, as grain's batching
      if not all(isinstance(v, dict) for v in values):
        raise TypeError(f"Batcher batches dicts of arrays, got {type(values[0]).__name__}")
      return {k: np.stack([v[k] for v in values]) for k in values[0]}
    layout, nbytes = spec
    slot = self._free_slot(nbytes)
    if slot is None:  # in-process, every slot held, or a batch larger than the first
      return _write(values, layout, np.empty(nbytes, np.uint8), 0, self.pad)
    mm, fd, inode, slot_bytes = self._pool
    # What the slot's padded rows hold: nothing in a new memfd (it reads as zeros); after a batch of
    # another layout (the last, smaller one), unknown.
    last_layout, written = self._written.get(
      slot, (layout, {k: np.zeros((s[0], len(s) - 1), np.int64) for k, _, s, _ in layout})
    )
    if last_layout != layout:
      written = {}
    _write(values, layout, mm, HEADER_BYTES + slot * slot_bytes, self.pad, written)
    self._written[slot] = (layout, written)
    self._seq += 1
    _words(mm, self.slots)[slot] = self._seq * 4 + WRITTEN
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
  # grain hands each worker's batches over in order (and one thread makes them: the loader pools
  # only then), so a slot still WRITTEN with an earlier number held a batch that grain dropped (a
  # set_state clears the queues): free it.
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
