"""A small web demo on the standard library's HTTP server; the model stays loaded and compiled.

GET  /             the page (index.html)
GET  /api/info     {"checkpoint", "image_size", "max_side", "max_prompts", "max_prompt_chars", "max_pixels"}
POST /api/segment  {"image": data URL or base64, "prompts": [str], "threshold": float | null}
                   (Content-Type: application/json)
                   -> {"overlay": PNG data URL, "masks": [{"prompt", "mask", "coverage"}], "notes",
                       "seconds", "size"}; bad requests get {"error": ...} with a 4xx status, a busy
                       server a 503 with Retry-After.

Every resource a client can spend is bounded (`ServerLimits`): the body's size (checked from
Content-Length before anything is read), the decoded pixels (checked from the image's header before
decoding), the prompts' number and length, the size the overlay and masks are drawn at, the handler
threads (`max_connections`: when all are taken, the oldest connection still sending its request is
dropped for the newcomer, else the newcomer gets a 503), the time a request may take to arrive
(`socket_timeout_s` per read, `read_timeout_s` in all), and the model work: a fixed pool of `workers`
behind a queue of `queue_size` (full: 503), with one model call at a time. Requests must name this
server in Host (DNS rebinding) and cross-origin use is off unless `allow_origin` names an origin.
"""

from __future__ import annotations

import base64
import binascii
import collections
import ctypes
import dataclasses
import io
import json
import math
import queue
import re
import socket
import sys
import threading
import time
import warnings
from concurrent.futures import Future
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from clipseg_jax import preprocess, visualize

PAGE = Path(__file__).with_name("index.html")
JSON_TYPE = "application/json"
LOCAL_NAMES = ("127.0.0.1", "localhost", "[::1]")  # always accepted in Host, with the port served
PREFLIGHT_MAX_AGE_S = 600  # how long a browser may cache an allowed CORS preflight


UPLOAD_CHUNK = 1 << 16  # body bytes read (and charged to the in-flight budget) at a time


@dataclasses.dataclass(frozen=True)
class ServerLimits:
  """What one client (and all of them together) can make the server spend. `clipseg-jax serve` has a
  flag for each field (--max-request-bytes, ...)."""

  max_request_bytes: int = dataclasses.field(
    default=40 << 20, metadata={"help": "largest POST body (Content-Length, checked before reading)"}
  )
  max_pixels: int = dataclasses.field(
    default=40_000_000, metadata={"help": "largest image (width*height from its header, before decoding)"}
  )
  max_side: int = dataclasses.field(
    default=2048,
    metadata={
      "help": "images are downscaled to this longer side (at most preprocess.MAX_SIDE) before the model "
      "and drawing; the overlay and masks come at that size"
    },
  )
  max_prompts: int = dataclasses.field(default=len(visualize.PALETTE), metadata={"help": "prompts per request"})
  max_prompt_chars: int = dataclasses.field(default=300, metadata={"help": "characters per prompt"})
  max_connections: int = dataclasses.field(
    default=32, metadata={"help": "connections handled at once (one thread each); more get a 503"}
  )
  max_body_bytes_in_flight: int = dataclasses.field(
    default=160 << 20, metadata={"help": "request bodies held in memory at once, all connections together"}
  )
  workers: int = dataclasses.field(
    default=2, metadata={"help": "threads doing image work (decode, model, drawing); model calls one at a time"}
  )
  queue_size: int = dataclasses.field(
    default=8, metadata={"help": "requests waiting for a worker; more get a 503 with Retry-After"}
  )
  socket_timeout_s: float = dataclasses.field(
    default=10.0, metadata={"help": "a client silent this long (reading or writing) is dropped"}
  )
  read_timeout_s: float = dataclasses.field(
    default=30.0, metadata={"help": "the whole request (line, headers, body) must arrive within this"}
  )
  retry_after_s: int = dataclasses.field(default=5, metadata={"help": "Retry-After of a 503"})
  min_upload_bytes_per_s: int = dataclasses.field(
    default=16 << 10,
    metadata={"help": "an upload slower than this on average (after --socket-timeout-s) is dropped with a 408"},
  )

  def __post_init__(self):
    check_positive(self)


def check_positive(limits):
  """Every field of a limits dataclass a finite number above zero (NaN and inf refused too), named as
  its command-line flag."""
  for f in dataclasses.fields(limits):
    value = getattr(limits, f.name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
      flag = "--" + f.name.replace("_", "-")
      raise ValueError(f"{type(limits).__name__}.{f.name} must be positive and finite ({flag}), got {value!r}")


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


class BadRequest(ValueError):
  def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST, headers: dict | None = None):
    super().__init__(message)
    self.status = status
    self.headers = headers or {}


def png_data_url(image: Image.Image) -> str:
  buf = io.BytesIO()
  image.save(buf, "PNG")
  return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def decode_base64_image(data) -> bytes:
  """A base64 image, optionally a data URL ("data:image/png;base64,...") -> its bytes."""
  if not isinstance(data, str) or not data:
    raise BadRequest("no image given")
  if data.startswith("data:"):
    header, comma, data = data.partition(",")
    if not comma:
      raise BadRequest("the image data URL has no ',' before its base64 data")
  try:
    raw = base64.b64decode(data, validate=True)
  except (binascii.Error, ValueError) as e:
    raise BadRequest(f"the image is not valid base64: {e}") from e
  if not raw:
    raise BadRequest("the image is empty")
  return raw


def check_pixels(raw: bytes, max_pixels: int):
  """Refuse an image whose header says it decodes to more than `max_pixels` (nothing is decoded)."""
  try:
    with Image.open(io.BytesIO(raw)) as im:
      width, height = im.size
  except Image.DecompressionBombError as e:
    raise BadRequest(f"the image is too large to decode safely: {e}", HTTPStatus.REQUEST_ENTITY_TOO_LARGE) from e
  except (UnidentifiedImageError, OSError, ValueError) as e:
    raise BadRequest(f"cannot read the upload as an image: {without_reprs(e)}") from e
  if width * height > max_pixels:
    raise BadRequest(
      f"the image is {width}x{height} ({width * height / 1e6:.1f} megapixels); the limit is "
      f"{max_pixels / 1e6:g} megapixels: downscale it first",
      HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    )


def decode_image(data: str, max_pixels: int | None = None, max_side: int | None = None) -> tuple[Image.Image, list]:
  """A base64 image (optionally a data URL) -> (RGB image within `max_side`, notes)."""
  raw = decode_base64_image(data)
  if max_pixels is not None:
    check_pixels(raw, max_pixels)
  return read_image(raw, max_side)


def without_reprs(error) -> str:
  """An error's text without Python object reprs (PIL names the buffer: `<_io.BytesIO object at 0x...>`)."""
  return re.sub(r"<[\w.]+ object at 0x[0-9a-fA-F]+>", "the data", str(error))


def read_image(raw: bytes, max_side: int | None = None) -> tuple[Image.Image, list[str]]:
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
      image = preprocess.read_image(io.BytesIO(raw), "the upload", max_side)  # ValueError: a 400 with its message
    except ValueError as e:
      raise ValueError(without_reprs(e)) from None
  return image, [str(w.message) for w in caught]


@dataclasses.dataclass
class Job:
  """A checked request, ready for a worker."""

  raw_image: bytes
  prompts: list[str]
  threshold: object


class Segmenter:
  """The warm model behind the page, compiled once at start. Requests are checked cheaply in the
  handler thread (`parse`), then run (`run`) on a fixed pool of workers behind a bounded queue
  (`submit`); the model itself is called one request at a time."""

  def __init__(self, model, name: str, limits: ServerLimits | None = None):
    self.model, self.name = model, name
    self.limits = limits or ServerLimits()
    self.lock = threading.Lock()  # one model call at a time
    self.model.predict(Image.new("RGB", (64, 64)), ["warm-up"])  # compile before the first visitor
    self.jobs: queue.Queue = queue.Queue(maxsize=self.limits.queue_size)
    self.workers = [
      threading.Thread(target=self._work, name=f"clipseg-worker-{i}", daemon=True) for i in range(self.limits.workers)
    ]
    for w in self.workers:
      w.start()

  @property
  def max_side(self) -> int:
    return min(self.limits.max_side, preprocess.MAX_SIDE)

  def info(self) -> dict:
    return {
      "checkpoint": self.name,
      "image_size": self.model.image_size,
      "max_side": self.max_side,
      "max_prompts": self.limits.max_prompts,
      "max_prompt_chars": self.limits.max_prompt_chars,
      "max_pixels": self.limits.max_pixels,
    }

  def parse(self, request) -> Job:
    """Everything that can be checked without decoding the image or running the model."""
    if not isinstance(request, dict):
      raise BadRequest("the request body must be a JSON object")
    raw = decode_base64_image(request.get("image"))
    prompts = request.get("prompts")
    if isinstance(prompts, str):
      prompts = [prompts]
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
      raise BadRequest("prompts must be a list of strings")
    for i, p in enumerate(prompts):
      if len(p) > self.limits.max_prompt_chars:
        raise BadRequest(f"prompt {i + 1} has {len(p)} characters; the limit is {self.limits.max_prompt_chars}")
    prompts = [p.strip() for p in prompts if p.strip()]
    if not prompts:
      raise BadRequest("type at least one prompt")
    if len(prompts) > self.limits.max_prompts:
      raise BadRequest(f"at most {self.limits.max_prompts} prompts per request, got {len(prompts)}")
    check_pixels(raw, self.limits.max_pixels)
    return Job(raw, prompts, request.get("threshold"))

  def run(self, job: Job) -> dict:
    image, notes = read_image(job.raw_image, self.max_side)
    start = time.perf_counter()
    with self.lock:  # predict checks the threshold: its ValueError becomes a 400
      probs = self.model.predict(image, job.prompts, threshold=job.threshold)[0]
    seconds = time.perf_counter() - start
    return {
      "overlay": png_data_url(visualize.overlay(image, probs, job.prompts)),
      "masks": [
        {"prompt": p, "mask": png_data_url(visualize.mask_image(m)), "coverage": float(np.mean(m > 0.5))}
        for p, m in zip(job.prompts, probs)
      ],
      "notes": notes,
      "seconds": round(seconds, 3),
      "size": [image.width, image.height],
    }

  def segment(self, request) -> dict:
    """parse + run, in the calling thread (no queue)."""
    return self.run(self.parse(request))

  def submit(self, job: Job) -> Future:
    """Queue `job` for a worker; a full queue is a 503 with Retry-After."""
    future: Future = Future()
    try:
      self.jobs.put_nowait((job, future))
    except queue.Full:
      raise BadRequest(
        "the server is busy; try again shortly",
        HTTPStatus.SERVICE_UNAVAILABLE,
        {"Retry-After": str(self.limits.retry_after_s)},
      ) from None
    return future

  def close(self):
    """Stop the workers once the jobs queued so far are done."""
    for _ in self.workers:
      self.jobs.put((None, None))

  def _work(self):
    while True:
      job, future = self.jobs.get()
      if future is None:
        return
      if not future.set_running_or_notify_cancel():
        continue
      try:
        future.set_result(self.run(job))
      except BaseException as e:  # noqa: BLE001 - handed to the waiting handler
        future.set_exception(e)
      finally:
        del job, future  # the image and the result are not kept while waiting for the next job
        if self.jobs.empty():
          release_memory()


def _libc():
  try:
    return ctypes.CDLL("libc.so.6") if sys.platform.startswith("linux") else None
  except OSError:  # not glibc
    return None


_LIBC = _libc()


def release_memory():
  """Hands freed heap pages back to the OS when the queue runs dry. glibc keeps them in per-thread
  arenas otherwise: after a burst of large uploads the server stayed ~220 MB above its resting RSS
  (experiments/scripts/soak.py)."""
  if _LIBC is not None:
    _LIBC.malloc_trim(0)


class DeadlineReader(io.RawIOBase):
  """The handler's socket as a raw stream whose reads give up (TimeoutError) once the client has been
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


class Handler(BaseHTTPRequestHandler):
  segmenter: Segmenter  # set on the subclass made by make_server
  quiet = False
  allow_origin: str | None = None
  allowed_hosts: frozenset = frozenset()

  server: BoundedHTTPServer
  # A garbage request line is answered as HTTP/1.0 (http.server would answer "HTTP/0.9": a body
  # without a status line, which no client can tell from a reply).
  default_request_version = "HTTP/1.0"

  def setup(self):
    limits = self.segmenter.limits
    self.timeout = limits.socket_timeout_s  # StreamRequestHandler.setup sets it on the socket
    super().setup()
    self.rfile.close()  # the socket's own file: replaced by one that keeps to the deadline
    sock = self.connection
    deadline = time.monotonic() + limits.read_timeout_s
    self.rfile = io.BufferedReader(
      DeadlineReader(sock, limits.socket_timeout_s, deadline, lambda n: self.server.progressed(sock))
    )
    self.server.reading(self.connection, True)

  def finish(self):
    self.server.reading(self.connection, False)
    super().finish()

  def parse_request(self) -> bool:
    if not super().parse_request():
      return False
    host = self.headers.get("Host")
    if host is None:
      self._json(HTTPStatus.BAD_REQUEST, {"error": "the request has no Host header"})
      return False
    if host.strip().lower() not in self.allowed_hosts:
      self._json(HTTPStatus.MISDIRECTED_REQUEST, {"error": f"this server does not answer for host {host!r}"})
      return False
    return True

  def do_GET(self):
    self._headers_read()
    if self.path in ("/", "/index.html"):
      self._send(HTTPStatus.OK, PAGE.read_bytes(), "text/html; charset=utf-8")
    elif self.path == "/api/info":
      self._json(HTTPStatus.OK, self.segmenter.info())
    else:
      self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {self.path}"})

  def do_OPTIONS(self):
    self._headers_read()
    if self.allow_origin is None or self.headers.get("Origin") != self.allow_origin:
      return self._json(HTTPStatus.FORBIDDEN, {"error": "cross-origin requests are not allowed"})
    self.send_response(HTTPStatus.NO_CONTENT)
    self._cors_headers()
    self.send_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
    self.send_header("Access-Control-Allow-Headers", "Content-Type")
    self.send_header("Access-Control-Max-Age", str(PREFLIGHT_MAX_AGE_S))
    self.send_header("Content-Length", "0")
    self.end_headers()

  def do_POST(self):
    try:
      if self.path != "/api/segment":
        self._headers_read()
        return self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {self.path}"})
      try:
        request = self._read_json()
      finally:
        self._headers_read()
      future = self.segmenter.submit(self.segmenter.parse(request))
      del request
      self._json(HTTPStatus.OK, future.result())
    except BadRequest as e:
      self._json(e.status, {"error": str(e)}, e.headers)
    except ValueError as e:  # the model's own input checks
      self._json(HTTPStatus.BAD_REQUEST, {"error": str(e)})
    except (TimeoutError, ConnectionError) as e:  # the client stalled or left: drop it
      self.log_error("dropped: %r", e)
      self.close_connection = True
    except Exception as e:  # noqa: BLE001 - keep serving whatever happened (logged, reported as a 500)
      self.log_error("segment failed: %r", e)
      self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error: {type(e).__name__}: {e}"})

  def _read_json(self):
    """The POST body as JSON; its headers are checked before a byte of it is read."""
    limit = self.segmenter.limits.max_request_bytes
    content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type != JSON_TYPE:
      raise BadRequest(
        f"the request must be {JSON_TYPE}, got {content_type or 'no Content-Type'}", HTTPStatus.UNSUPPORTED_MEDIA_TYPE
      )
    if "Transfer-Encoding" in self.headers:
      raise BadRequest("chunked uploads are not accepted: send Content-Length", HTTPStatus.LENGTH_REQUIRED)
    text = self.headers.get("Content-Length")
    if text is None:
      raise BadRequest("the request needs a Content-Length", HTTPStatus.LENGTH_REQUIRED)
    text = text.strip()
    digits = text.isascii() and text.isdigit()
    if not digits or len(text) > len(str(limit)):
      if digits:  # a huge number
        raise BadRequest(
          f"the upload is {text} bytes; the limit is {limit >> 20} MB", HTTPStatus.REQUEST_ENTITY_TOO_LARGE
        )
      raise BadRequest(f"Content-Length must be a non-negative integer, got {text!r}")
    length = int(text)
    if length > limit:
      raise BadRequest(
        f"the upload is {length / (1 << 20):.1f} MB; the limit is {limit >> 20} MB", HTTPStatus.REQUEST_ENTITY_TOO_LARGE
      )
    with self.server.body_budget() as budget:
      body = self._receive(length, budget)
      try:
        return json.loads(body or b"null")
      except (ValueError, RecursionError) as e:  # JSONDecodeError, bad UTF-8, too deep, huge numbers
        raise BadRequest(f"the request body is not JSON: {type(e).__name__}: {e}"[:500]) from e

  def _receive(self, length: int, budget) -> bytes:
    """`length` body bytes, charged to the server's in-flight budget as they arrive (not as declared:
    a client announcing 40 MB and trickling reserves only what it sent), dropped with a 408 when slower
    on average than `min_upload_bytes_per_s` once `socket_timeout_s` has passed."""
    limits = self.segmenter.limits
    chunks, got, start = [], 0, time.monotonic()
    while got < length:
      chunk = self.rfile.read1(min(UPLOAD_CHUNK, length - got))
      if not chunk:
        raise ConnectionError(f"the client sent {got} of {length} bytes and closed")
      budget.charge(len(chunk))
      chunks.append(chunk)
      got += len(chunk)
      elapsed = time.monotonic() - start
      if got < length and elapsed > limits.socket_timeout_s and got < limits.min_upload_bytes_per_s * elapsed:
        raise BadRequest(
          f"the upload is too slow ({got / elapsed:.0f} bytes/s; the minimum is {limits.min_upload_bytes_per_s})",
          HTTPStatus.REQUEST_TIMEOUT,
          {"Connection": "close"},
        )
    return b"".join(chunks)

  def _headers_read(self):
    """The request has arrived: no more deadline; the connection is no longer preemptible."""
    self.server.reading(self.connection, False)
    self.connection.settimeout(self.segmenter.limits.socket_timeout_s)

  def _cors_headers(self):
    if self.allow_origin is not None and self.headers.get("Origin") == self.allow_origin:
      self.send_header("Access-Control-Allow-Origin", self.allow_origin)
      self.send_header("Vary", "Origin")

  def _json(self, status, payload, headers: dict | None = None):
    self._send(status, json.dumps(payload).encode(), JSON_TYPE, headers)

  def _send(self, status, body: bytes, content_type: str, headers: dict | None = None):
    self.send_response(status)
    self.send_header("Content-Type", content_type)
    self.send_header("Content-Length", str(len(body)))
    self.send_header("Cache-Control", "no-store")
    self.send_header("X-Content-Type-Options", "nosniff")
    for key, value in (headers or {}).items():
      self.send_header(key, value)
    if getattr(self, "headers", None) is not None:
      self._cors_headers()
    self.end_headers()
    self.wfile.write(body)

  def send_error(self, code, message=None, explain=None):
    # http.server's own errors (a malformed request line, say): JSON like ours, no body read
    self.close_connection = True
    try:
      self._json(code, {"error": message or HTTPStatus(code).phrase})
    except OSError:
      pass

  def log_message(self, format, *args):
    if not self.quiet:
      super().log_message(format, *args)


class BoundedHTTPServer(ThreadingHTTPServer):
  """A ThreadingHTTPServer with at most `max_connections` handler threads. When all are taken, the
  oldest connection still sending its request is cut to make room (a client that opens connections
  and stalls cannot lock others out); if none is, the newcomer gets a 503 with Retry-After, written
  without a thread."""

  daemon_threads = True
  block_on_close = False
  request_queue_size = 128  # the listen backlog
  refuse_wait_s = 0.5  # how long the accept loop waits for a cut connection's thread to end

  def __init__(self, address, handler, limits: ServerLimits, quiet: bool = False):
    self.limits, self.quiet = limits, quiet
    self.slots = threading.BoundedSemaphore(limits.max_connections)
    self.readers: collections.OrderedDict = collections.OrderedDict()  # socket -> None, oldest first
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

  def body_budget(self):
    """A context whose `charge(n)` counts n more body bytes held in memory against
    `max_body_bytes_in_flight` (a 503 once it would be exceeded); all are given back on exit."""
    server = self

    class Budget:
      held = 0

      def charge(self, n: int):
        with server.body_lock:
          if server.body_bytes + n > server.limits.max_body_bytes_in_flight:
            raise BadRequest(
              "the server is busy receiving other uploads; try again shortly",
              HTTPStatus.SERVICE_UNAVAILABLE,
              {"Retry-After": str(server.limits.retry_after_s)},
            )
          server.body_bytes += n
          self.held += n

      def __enter__(self):
        return self

      def __exit__(self, *exc):
        with server.body_lock:
          server.body_bytes -= self.held

    return Budget()

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


def allowed_hosts(host: str, port: int, extra=()) -> frozenset:
  """The Host header values naming this server: the local names and `host` (and `extra`), with the
  port (and without it on port 80)."""
  names = {n.lower() for n in (*LOCAL_NAMES, host, *extra) if n and n not in ("0.0.0.0", "::", "")}
  names |= {f"[{n}]" for n in names if ":" in n and not n.startswith("[")}  # IPv6 literals
  values = {f"{n}:{port}" for n in names}
  if port == 80:
    values |= names
  return frozenset(values)


def make_server(
  model,
  name: str = "",
  host: str = "127.0.0.1",
  port: int = 7860,
  quiet: bool = False,
  limits: ServerLimits | None = None,
  allow_origin: str | None = None,
  extra_hosts=(),
):
  """A BoundedHTTPServer serving `model` (port 0 picks a free port: see `server.server_address`).
  allow_origin: the one origin (scheme://host[:port]) allowed to call the API from a browser.
  extra_hosts: more names the server answers to in Host (a machine name, when host is 0.0.0.0)."""
  limits = limits or ServerLimits()
  handler = type(
    "ClipSegHandler",
    (Handler,),
    {"segmenter": Segmenter(model, name, limits), "quiet": quiet, "allow_origin": allow_origin},
  )
  server = BoundedHTTPServer((host, port), handler, limits, quiet)
  handler.allowed_hosts = allowed_hosts(host, server.server_address[1], extra_hosts)
  return server
