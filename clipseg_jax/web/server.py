"""A small web demo on the standard library's HTTP server; the model stays loaded and compiled.

GET  /             the page (index.html)
GET  /api/info     {"checkpoint", "image_size", "max_side"}
POST /api/segment  {"image": data URL or base64, "prompts": [str], "threshold": float | null}
                   -> {"overlay": PNG data URL, "masks": [{"prompt", "mask", "coverage"}], "notes",
                       "seconds"}; bad requests get {"error": ...} with status 400 or 413.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import threading
import time
import warnings
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

from clipseg_jax import preprocess, visualize

PAGE = Path(__file__).with_name("index.html")
MAX_REQUEST_BYTES = 40 << 20  # an upload of this size (base64) is refused before it is read
MAX_PROMPTS = 10  # one palette colour each


class BadRequest(ValueError):
  def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST):
    super().__init__(message)
    self.status = status


def png_data_url(image: Image.Image) -> str:
  buf = io.BytesIO()
  image.save(buf, "PNG")
  return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def decode_image(data: str) -> tuple[Image.Image, list[str]]:
  """A base64 image (optionally a data URL) -> (RGB image within MAX_SIDE, notes)."""
  if not isinstance(data, str) or not data:
    raise BadRequest("no image given")
  try:
    raw = base64.b64decode(data.split(",", 1)[1] if data.startswith("data:") else data, validate=True)
  except (binascii.Error, ValueError) as e:
    raise BadRequest(f"the image is not valid base64: {e}") from e
  if not raw:
    raise BadRequest("the image is empty")
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    image = preprocess.read_image(io.BytesIO(raw), "the upload")  # ValueError: a 400 with its message
  return image, [str(w.message) for w in caught]


class Segmenter:
  """The warm model behind the page: one request at a time, compiled once at start."""

  def __init__(self, model, name: str):
    self.model, self.name = model, name
    self.lock = threading.Lock()
    self.model.predict(Image.new("RGB", (64, 64)), ["warm-up"])  # compile before the first visitor

  def info(self) -> dict:
    return {"checkpoint": self.name, "image_size": self.model.image_size, "max_side": preprocess.MAX_SIDE}

  def segment(self, request: dict) -> dict:
    if not isinstance(request, dict):
      raise BadRequest("the request body must be a JSON object")
    image, notes = decode_image(request.get("image"))
    prompts = request.get("prompts")
    if isinstance(prompts, str):
      prompts = [prompts]
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
      raise BadRequest("prompts must be a list of strings")
    prompts = [p.strip() for p in prompts if p.strip()]
    if not prompts:
      raise BadRequest("type at least one prompt")
    if len(prompts) > MAX_PROMPTS:
      raise BadRequest(f"at most {MAX_PROMPTS} prompts per request, got {len(prompts)}")
    start = time.perf_counter()
    with self.lock:  # predict checks the threshold: its ValueError becomes a 400
      probs = self.model.predict(image, prompts, threshold=request.get("threshold"))[0]
    seconds = time.perf_counter() - start
    return {
      "overlay": png_data_url(visualize.overlay(image, probs, prompts)),
      "masks": [
        {"prompt": p, "mask": png_data_url(visualize.mask_image(m)), "coverage": float(np.mean(m > 0.5))}
        for p, m in zip(prompts, probs)
      ],
      "notes": notes,
      "seconds": round(seconds, 3),
      "size": [image.width, image.height],
    }


class Handler(BaseHTTPRequestHandler):
  segmenter: Segmenter  # set on the subclass made by make_server
  quiet = False

  def do_GET(self):
    if self.path in ("/", "/index.html"):
      self._send(HTTPStatus.OK, PAGE.read_bytes(), "text/html; charset=utf-8")
    elif self.path == "/api/info":
      self._json(HTTPStatus.OK, self.segmenter.info())
    else:
      self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {self.path}"})

  def do_POST(self):
    if self.path != "/api/segment":
      return self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {self.path}"})
    try:
      length = int(self.headers.get("Content-Length") or 0)
      if length > MAX_REQUEST_BYTES:
        raise BadRequest(
          f"the upload is {length >> 20} MB; the limit is {MAX_REQUEST_BYTES >> 20} MB",
          HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        )
      try:
        request = json.loads(self.rfile.read(length) or b"null")
      except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"the request body is not JSON: {e}") from e
      self._json(HTTPStatus.OK, self.segmenter.segment(request))
    except BadRequest as e:
      self._json(e.status, {"error": str(e)})
    except ValueError as e:  # the model's own input checks
      self._json(HTTPStatus.BAD_REQUEST, {"error": str(e)})
    except Exception as e:  # noqa: BLE001 - keep serving whatever happened (logged, reported as a 500)
      self.log_error("segment failed: %r", e)
      self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error: {type(e).__name__}: {e}"})

  def _json(self, status, payload):
    self._send(status, json.dumps(payload).encode(), "application/json")

  def _send(self, status, body: bytes, content_type: str):
    self.send_response(status)
    self.send_header("Content-Type", content_type)
    self.send_header("Content-Length", str(len(body)))
    self.send_header("Cache-Control", "no-store")
    self.end_headers()
    self.wfile.write(body)

  def log_message(self, format, *args):
    if not self.quiet:
      super().log_message(format, *args)


def make_server(model, name: str = "", host: str = "127.0.0.1", port: int = 7860, quiet: bool = False):
  """A ThreadingHTTPServer serving `model` (port 0 picks a free port: see `server.server_address`)."""
  handler = type("ClipSegHandler", (Handler,), {"segmenter": Segmenter(model, name), "quiet": quiet})
  return ThreadingHTTPServer((host, port), handler)
