"""The HTTP server's connections, bounded: at most `max_connections` handler threads (the oldest idle
connection is cut for a newcomer, else the newcomer gets a 503 without a thread), request bodies held in
memory counted against one budget as their bytes arrive, and reads that give up at a deadline."""

from __future__ import annotations

import collections
import io
import json
import re
import socket
import sys
import threading
import time
from http.server import ThreadingHTTPServer

from clipseg_jax.web.limits import Busy, ServerLimits

JSON_TYPE = "application/json"


def check_address(host: str, port: int, allow_origin: str | None = None):
  """What `make_server` will be given, checked before a model loads: a port in 0..65535, an address
  this machine can listen on now, an origin of the form scheme://host[:port]."""
  if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
    raise ValueError(f"--port must be between 0 and 65535 (0: any free port), got {port!r}")
  if allow_origin is not None and not re.fullmatch(r"https?://[^/\s*]+(:\d{1,5})?", allow_origin):
    raise ValueError(f"--allow-origin must be one origin, scheme://host[:port] (no path, no '*'), got {allow_origin!r}")
  try:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
      probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
      probe.bind((host, port))
  except OSError as e:
    raise OSError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


class DeadlineReader(io.RawIOBase):
  """A handler's socket as a raw stream whose reads give up (TimeoutError) once the client has been
  silent `timeout` seconds or the request's `deadline` (time.monotonic) has passed: a client sending
  a byte now and then cannot hold a thread for longer than the deadline."""

  def __init__(self, sock: socket.socket, timeout: float, deadline: float, on_bytes=None):
    self.sock, self.timeout, self.deadline, self.on_bytes = sock, timeout, deadline, on_bytes

  def readable(self):
    return True

  def readinto(self, b):
    remaining = self.deadline - time.monotonic()
    if remaining <= 0:
      raise TimeoutError("the request took too long to arrive")
    self.sock.settimeout(min(self.timeout, remaining))
    n = self.sock.recv_into(b)
    if n and self.on_bytes is not None:
      self.on_bytes(n)
    return n


class BodyBudget:
  """A context whose `charge(n)` counts n more body bytes held in memory against the server's
  `max_body_bytes_in_flight` (`Busy` once it would be exceeded); all are given back on exit."""

  def __init__(self, server: BoundedHTTPServer):
    self.server, self.held = server, 0

  def charge(self, n: int):
    server = self.server
    with server.body_lock:
      if server.body_bytes + n > server.limits.max_body_bytes_in_flight:
        raise Busy("the server is busy receiving other uploads; try again shortly", server.limits.retry_after_s)
      server.body_bytes += n
      self.held += n

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    with self.server.body_lock:
      self.server.body_bytes -= self.held


class BoundedHTTPServer(ThreadingHTTPServer):
  """A ThreadingHTTPServer with at most `max_connections` handler threads. When all are taken, the
  oldest connection still sending its request is cut to make room (a client that opens connections
  and stalls cannot lock others out); if none is, the newcomer gets a 503 with Retry-After, written
  without a thread. Handlers report `reading` (sending its request) and `progressed` (bytes arrived)."""

  daemon_threads = True
  block_on_close = False
  request_queue_size = 128  # the listen backlog
  refuse_wait_s = 0.5  # how long the accept loop waits for a cut connection's thread to end

  def __init__(self, address, handler, limits: ServerLimits, quiet: bool = False):
    self.limits, self.quiet = limits, quiet
    self.slots = threading.BoundedSemaphore(limits.max_connections)
    self.readers: collections.OrderedDict = collections.OrderedDict()  # socket -> sent anything, oldest first
    self.readers_lock = threading.Lock()
    self.body_bytes = 0
    self.body_lock = threading.Lock()
    self.refused = 0
    super().__init__(address, handler)

  def reading(self, sock, flag: bool):
    with self.readers_lock:
      if flag:
        self.readers[sock] = False  # sent nothing yet
      else:
        self.readers.pop(sock, None)

  def body_budget(self) -> BodyBudget:
    return BodyBudget(self)

  def progressed(self, sock):
    """`sock` has sent bytes: it is no longer idle (idle connections are cut first when all are busy)."""
    with self.readers_lock:
      if sock in self.readers:
        self.readers[sock] = True

  def process_request(self, request, client_address):
    if not self.slots.acquire(blocking=False):
      with self.readers_lock:
        # The oldest connection that has sent nothing goes first; one making progress only if none is idle.
        idle = (sock for sock, sent in self.readers.items() if not sent)
        oldest = next(idle, None) or next(iter(self.readers), None)
        if oldest is not None:
          del self.readers[oldest]
      if oldest is not None:
        try:
          oldest.shutdown(socket.SHUT_RDWR)  # its thread sees the end of the stream and finishes
        except OSError:
          pass
      if oldest is None or not self.slots.acquire(timeout=self.refuse_wait_s):
        return self.refuse(request)
    try:
      super().process_request(request, client_address)
    except BaseException:
      self.slots.release()
      raise

  def process_request_thread(self, request, client_address):
    try:
      super().process_request_thread(request, client_address)
    finally:
      self.slots.release()

  def refuse(self, request):
    """A 503 without a thread: the response is small enough for the socket's buffer."""
    self.refused += 1
    if not self.quiet:
      print(
        f"refused a connection: all {self.limits.max_connections} connections busy (503)", file=sys.stderr, flush=True
      )
    body = json.dumps({"error": "the server is busy; try again shortly"}).encode()
    head = (
      f"HTTP/1.0 503 Service Unavailable\r\nContent-Type: {JSON_TYPE}\r\nContent-Length: {len(body)}\r\n"
      f"Retry-After: {self.limits.retry_after_s}\r\nConnection: close\r\n\r\n"
    )
    try:
      request.setblocking(False)
      request.send(head.encode() + body)
    except OSError:
      pass
    self.shutdown_request(request)

  def server_close(self):
    super().server_close()
    self.RequestHandlerClass.segmenter.close()

  def handle_error(self, request, client_address):
    """One line per failed connection (a client that reset, say), never a traceback: abuse must not
    flood the log."""
    if not self.quiet:
      error = sys.exc_info()[1]
      print(f"{client_address[0]}: connection dropped: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
