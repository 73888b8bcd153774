"""A fixed pool of worker threads behind a bounded queue (the HTTP server's image work: decoding, the
model, drawing), and `release_memory`, which hands freed heap pages back to the OS."""

from __future__ import annotations

import ctypes
import queue
import sys
import threading
from concurrent.futures import Future

from clipseg_jax.web.limits import Busy


class WorkerPool:
  """`workers` threads taking calls from a queue of `queue_size`; a full queue is `Busy` at once (no
  caller waits for room). Freed memory goes back to the OS whenever the queue runs dry."""

  def __init__(self, workers: int, queue_size: int, retry_after_s: int, name: str = "clipseg-worker"):
    self.retry_after_s = retry_after_s
    self.calls: queue.Queue = queue.Queue(maxsize=queue_size)
    self.threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(workers)]
    for t in self.threads:
      t.start()

  def submit(self, fn, *args) -> Future:
    """`fn(*args)` queued for a worker; its Future holds the result (or the exception)."""
    future: Future = Future()
    try:
      self.calls.put_nowait((fn, args, future))
    except queue.Full:
      raise Busy("the server is busy; try again shortly", self.retry_after_s) from None
    return future

  def close(self):
    """Stop the workers once the calls queued so far are done."""
    for _ in self.threads:
      self.calls.put((None, (), None))

  def _work(self):
    while True:
      fn, args, future = self.calls.get()
      if future is None:
        return
      if not future.set_running_or_notify_cancel():
        continue
      try:
        future.set_result(fn(*args))
      except BaseException as e:  # noqa: BLE001 - handed to the waiting caller
        future.set_exception(e)
      finally:
        del fn, args, future  # the image and the result are not kept while waiting for the next call
        if self.calls.empty():
          release_memory()


def _libc():
  try:
    return ctypes.CDLL("libc.so.6") if sys.platform.startswith("linux") else None
  except OSError:  # not glibc
    return None


_LIBC = _libc()


def release_memory():
  """Hands freed heap pages back to the OS (glibc's `malloc_trim`; nothing elsewhere). glibc keeps them
  in per-thread arenas otherwise: after a burst of large uploads the server stayed ~220 MB above its
  resting RSS (experiments/scripts/soak.py)."""
  if _LIBC is not None:
    _LIBC.malloc_trim(0)
