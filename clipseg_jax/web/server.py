"""A small web demo on the standard library's HTTP server; the model stays loaded and compiled.

GET  /             the page (index.html)
GET  /api/info     {"checkpoint", "image_size", "max_side", "max_prompts", "max_prompt_chars", "max_pixels"}
POST /api/segment  {"image": data URL or base64, "prompts": [str], "threshold": float | null}
                   (Content-Type: application/json)
                   -> {"overlay": PNG data URL, "masks": [{"prompt", "mask", "coverage"}], "notes",
                       "seconds", "size"}; bad requests get {"error": ...} with a 4xx status, a busy
                       server a 503 with Retry-After.

Every resource a client can spend is bounded (`ServerLimits`, web/limits.py): the body's size (checked
from Content-Length before anything is read), the decoded pixels (checked from the image's header before
decoding: web/uploads.py), the prompts' number and length, the size the overlay and masks are drawn at,
the handler threads and the body bytes in memory (web/connections.py), the time a request may take to
arrive (`socket_timeout_s` per read, `read_timeout_s` in all), and the model work: a fixed pool of
`workers` behind a queue of `queue_size` (web/workers.py, web/json_api.py). This module is the HTTP:
requests must name this server in Host (DNS rebinding) and cross-origin use is off unless
`allow_origin` names an origin.
"""

from __future__ import annotations

import io
import json
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from clipseg_jax.web.connections import JSON_TYPE, BoundedHTTPServer, DeadlineReader, check_address
from clipseg_jax.web.json_api import ApiSegmenter
from clipseg_jax.web.limits import Busy, ServerLimits
from clipseg_jax.web.uploads import UploadTooLarge

__all__ = ["ServerLimits", "check_address", "make_server"]

PAGE = Path(__file__).with_name("index.html")
LOCAL_NAMES = ("127.0.0.1", "localhost", "[::1]")  # always accepted in Host, with the port served
PREFLIGHT_MAX_AGE_S = 600  # how long a browser may cache an allowed CORS preflight
UPLOAD_CHUNK = 1 << 16  # body bytes read (and charged to the in-flight budget) at a time


class BadRequest(ValueError):
  """A request refused at the HTTP level (its headers, its upload's pace), with its status."""

  def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST, headers: dict | None = None):
    super().__init__(message)
    self.status = status
    self.headers = headers or {}


class Handler(BaseHTTPRequestHandler):
  """The page and the JSON API; requests are read within the server's limits, then handed to the
  segmenter's workers."""

  segmenter: ApiSegmenter  # set on the subclass made by make_server
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
    except Busy as e:
      self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(e)}, {"Retry-After": str(e.retry_after_s)})
    except UploadTooLarge as e:
      self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": str(e)})
    except ValueError as e:  # the request's own checks (json_api, uploads) and the model's
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
    {"segmenter": ApiSegmenter(model, name, limits), "quiet": quiet, "allow_origin": allow_origin},
  )
  server = BoundedHTTPServer((host, port), handler, limits, quiet)
  handler.allowed_hosts = allowed_hosts(host, server.server_address[1], extra_hosts)
  return server
