"""`clipseg-jax serve`: the JSON API (good and bad requests, the server keeps serving), fault
injection for every resource a client can spend (each bad request answered or dropped while a good
one sent meanwhile is served within 2 s), and the page end to end in headless Chromium, with a
screenshot for people to look at."""

import base64
import http.client
import io
import json
import os
import shutil
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipseg_jax.web.server import ServerLimits, make_server

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCREENSHOT = Path(os.environ.get("CLIPSEG_ARTIFACTS", "out/test-artifacts")) / "serve_page.png"


@pytest.fixture(scope="module")
def server(tiny_model):
  srv = make_server(tiny_model, "tiny random-weight model", port=0, quiet=True)
  thread = threading.Thread(target=srv.serve_forever, daemon=True)
  thread.start()
  host, port = srv.server_address[:2]
  yield f"http://{host}:{port}"
  srv.shutdown()
  srv.server_close()


def png_b64(array) -> str:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, "PNG")
  return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def post(url, body: bytes):
  req = urllib.request.Request(url + "/api/segment", data=body, headers={"Content-Type": "application/json"})
  try:
    with urllib.request.urlopen(req, timeout=60) as r:
      return r.status, json.loads(r.read())
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read())


def decode_png(data_url: str) -> Image.Image:
  return Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1])))


def test_segment_api(server, tiny_model):
  image = np.random.RandomState(0).randint(0, 256, (48, 80, 3), np.uint8)
  status, out = post(
    server, json.dumps({"image": png_b64(image), "prompts": ["a cat", " ", "a dog"], "threshold": None}).encode()
  )
  assert status == 200, out
  assert [m["prompt"] for m in out["masks"]] == ["a cat", "a dog"]  # blank lines dropped
  assert decode_png(out["overlay"]).size == (80, 48)
  mask = np.asarray(decode_png(out["masks"][1]["mask"]), np.float32) / 255
  want = tiny_model.predict(image, ["a cat", "a dog"])[0, 1]
  assert np.abs(mask - want).max() <= 0.5 / 255 + 1e-6  # the page shows what predict computes


def test_expressions_label_maps_and_instances(server, tiny_model):
  """Expressions come back as the library computes them (its operators are tested in test_algebra.py), a label
  map takes the most probable prompt above its threshold, instances are the components of a thresholded mask."""
  image = np.random.RandomState(1).randint(0, 256, (40, 56, 3), np.uint8)
  prompts = ['"a cat" - "a dog"', '"a cat" | "a dog"', "a dog"]
  body = {"image": png_b64(image), "prompts": prompts, "label_map": True, "thresholds": [0.5, 0.45, 0.4]}
  status, out = post(server, json.dumps({**body, "instances": True, "min_area": 3}).encode())
  assert status == 200, out
  want = tiny_model.predict_expressions(image, prompts)[0]
  cat, dog = tiny_model.predict(image, ["a cat", "a dog"])[0]
  assert np.abs(want[1] - np.maximum(cat, dog)).max() < 0.05  # combined at the model's size, then resized
  for entry, w in zip(out["masks"], want):
    assert np.abs(np.asarray(decode_png(entry["mask"]), np.float32) / 255 - w).max() <= 0.5 / 255 + 1e-5
  # The label map, from the rule: prompt i where p_i > t_i and p_i is the largest such; else background.
  t = np.array([0.5, 0.45, 0.4])[:, None, None]
  stack = np.stack(want)
  above = np.where(stack > t, stack, -1.0)
  labels = np.where(above.max(0) >= 0, above.argmax(0) + 1, 0)
  got = decode_png(out["label_map"]["labels"])
  assert got.mode == "P" and got.size == (56, 40)
  assert (np.asarray(got) == labels).mean() > 0.99  # pixels at a threshold's edge may round either way
  assert [e["name"] for e in out["label_map"]["legend"]] == ["background", *prompts]
  for entry in out["masks"]:
    scores = [i["score"] for i in entry["instances"]]
    assert scores == sorted(scores, reverse=True) and all(0.5 < s <= 1 for s in scores)
    for i in entry["instances"]:
      x0, y0, x1, y1 = i["box"]
      assert 0 <= x0 < x1 <= 56 and 0 <= y0 < y1 <= 40 and 3 <= i["area"] <= (x1 - x0 + 1) * (y1 - y0 + 1)


@pytest.mark.parametrize(
  "extra,match",
  [
    ({"prompts": ['"a" - ']}, "position"),
    ({"prompts": ['"a" | "b" | "c" | "d" | "e" | "f" | "g" | "h" | "i" | "j" | "k"']}, "distinct prompts"),
    ({"prompts": ["a"], "logic": "boolean"}, "logic must be one of"),
    ({"prompts": ["a"], "label_map": "yes"}, "label_map must be true or false"),
    ({"prompts": ["a", "b"], "label_map": True, "thresholds": [0.5]}, "one threshold or 2"),
    ({"prompts": ["a"], "instances": True, "min_area": -1}, "min_area"),
    ({"prompts": ["a"], "instances": True, "min_area": 1e12}, "min_area"),
    ({"prompts": ["a"], "label_map": True, "thresholds": {"a": 0.5}}, "thresholds must be a number or a list"),
  ],
)
def test_bad_expressions_and_options_are_400s(server, extra, match):
  got, out = post(server, json.dumps({"image": png_b64(np.zeros((8, 8, 3), np.uint8)), **extra}).encode())
  assert got == 400 and match in out["error"], out


@pytest.mark.parametrize(
  "body,status,match",
  [
    (b"{not json", 400, "not JSON"),
    (json.dumps({"image": "data:image/png;base64,@@@", "prompts": ["a"]}).encode(), 400, "base64"),
    (json.dumps({"image": base64.b64encode(b"not an image").decode(), "prompts": ["a"]}).encode(), 400, "cannot read"),
    (json.dumps({"prompts": ["a"]}).encode(), 400, "no image"),
    (
      json.dumps({"image": png_b64(np.zeros((8, 8, 3), np.uint8)), "prompts": ["", "  "]}).encode(),
      400,
      "at least one prompt",
    ),
    (
      json.dumps({"image": png_b64(np.zeros((8, 8, 3), np.uint8)), "prompts": ["a"], "threshold": 7}).encode(),
      400,
      "threshold",
    ),
    (json.dumps([1, 2]).encode(), 400, "JSON object"),
  ],
)
def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(server, body, status, match):
  got, out = post(server, body)
  assert got == status and match in out["error"], out
  ok, _ = post(server, json.dumps({"image": png_b64(np.zeros((16, 16, 3), np.uint8)), "prompts": ["a"]}).encode())
  assert ok == 200


def test_large_upload_is_downscaled_with_a_note(server, monkeypatch):
  from clipseg_jax import preprocess

  monkeypatch.setattr(preprocess, "MAX_SIDE", 64)
  status, out = post(
    server, json.dumps({"image": png_b64(np.zeros((100, 200, 3), np.uint8)), "prompts": ["a"]}).encode()
  )
  assert status == 200 and out["size"] == [64, 32] and "downscaled to 64x32" in out["notes"][0]


@pytest.mark.skipif(
  not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)) and os.environ.get("CLIPSEG_REQUIRE_BROWSER") != "1",
  reason="Debian's chromium and chromium-driver are not installed (make test installs them)",
)
@pytest.mark.slow  # starts a browser
def test_page_in_headless_chromium(server, tmp_path):
  from selenium import webdriver
  from selenium.webdriver.chrome.service import Service
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support import expected_conditions as EC
  from selenium.webdriver.support.ui import WebDriverWait

  photo = tmp_path / "photo.png"
  yy, xx = np.mgrid[0:240, 0:320]
  scene = np.stack([xx * 255 // 320, yy * 255 // 240, np.full_like(xx, 120)], -1).astype(np.uint8)
  scene[60:180, 100:220] = (220, 40, 40)
  Image.fromarray(scene).save(photo)
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  profile = tempfile.mkdtemp()
  for flag in (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    f"--user-data-dir={profile}",
    "--window-size=1100,700",
  ):
    options.add_argument(flag)
  driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
  try:
    driver.get(server)
    wait = WebDriverWait(driver, 60)
    wait.until(EC.text_to_be_present_in_element((By.ID, "checkpoint"), "tiny random-weight model"))
    # A bad request first: no image chosen yet gives a message on the page, not a dead page.
    driver.find_element(By.ID, "run").click()
    assert "Choose an image" in driver.find_element(By.ID, "error").text
    driver.find_element(By.ID, "file").send_keys(str(photo))
    prompts = driver.find_element(By.ID, "prompts")
    prompts.clear()
    prompts.send_keys("a red square\nthe background")
    driver.find_element(By.ID, "run").click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "status"), "done: 2 prompt(s)"))
    captions = [f.text for f in driver.find_elements(By.CSS_SELECTOR, "#masks figcaption")]
    assert [c.split(" (")[0] for c in captions] == ["a red square", "the background"]
    result = driver.find_element(By.ID, "result")
    assert result.get_attribute("src").startswith("data:image/png;base64,")
    assert driver.execute_script("return arguments[0].naturalWidth", result) == 320
    # The server's error comes back onto the page, and the page keeps working after it.
    prompts.clear()
    driver.find_element(By.ID, "run").click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "error"), "at least one prompt"))
    prompts.send_keys("a red square")
    driver.find_element(By.ID, "run").click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "status"), "done: 1 prompt(s)"))
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(SCREENSHOT))
  finally:
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


# ---- fault injection: every resource a client can spend is bounded --------------------------------

GOOD = json.dumps({"image": png_b64(np.zeros((16, 16, 3), np.uint8)), "prompts": ["a"]}).encode()
SERVED_WITHIN_S = 2.0  # a well-formed request sent while a bad one is in flight


@pytest.fixture
def make(tiny_model):
  """Servers with their own limits (and hooks), shut down after the test."""
  servers = []

  def start(**kwargs):
    srv = make_server(tiny_model, "tiny", port=0, quiet=True, **kwargs)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    servers.append(srv)
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"

  yield start
  for srv in servers:
    srv.shutdown()
    srv.server_close()


def port_of(url: str) -> int:
  return int(url.rsplit(":", 1)[1])


def connect(url: str, timeout: float = 10) -> socket.socket:
  return socket.create_connection(("127.0.0.1", port_of(url)), timeout=timeout)


def head(url: str, lines=(), method="POST", path="/api/segment", host: str | None = "default") -> bytes:
  host = f"127.0.0.1:{port_of(url)}" if host == "default" else host
  start = [f"{method} {path} HTTP/1.1"] + ([f"Host: {host}"] if host is not None else [])
  return ("\r\n".join(start + list(lines)) + "\r\n\r\n").encode()


def response(sock: socket.socket):
  """(status, headers, JSON body or None) of the response on `sock`."""
  r = http.client.HTTPResponse(sock)
  r.begin()
  body = r.read()
  return r.status, {k.lower(): v for k, v in r.getheaders()}, json.loads(body) if body else None


def served_in_time(url: str):
  """A good request, sent now, is answered 200 within SERVED_WITHIN_S."""
  start = time.monotonic()
  status, out = post(url, GOOD)
  took = time.monotonic() - start
  assert status == 200 and took < SERVED_WITHIN_S, (status, out, took)


def raw_case(url: str, request: bytes, read_timeout: float = 5):
  """Send `request` on a socket held open, serve a good request meanwhile, then read the answer."""
  with connect(url, read_timeout) as sock:
    sock.sendall(request)
    served_in_time(url)
    return response(sock)


@pytest.mark.parametrize(
  "lines,status,match",
  [
    (["Content-Type: application/json", "Content-Length: -1"], 400, "non-negative integer"),
    (["Content-Type: application/json", "Content-Length: 12abc"], 400, "non-negative integer"),
    (["Content-Type: application/json"], 411, "Content-Length"),
    (["Content-Type: application/json", "Transfer-Encoding: chunked"], 411, "chunked"),
    (["Content-Type: application/json", f"Content-Length: {(40 << 20) + 1}"], 413, "limit is 40 MB"),
    (["Content-Type: application/json", "Content-Length: 99999999999999999999999"], 413, "limit"),
    (["Content-Type: text/plain", "Content-Length: 2"], 415, "application/json"),
    (["Content-Length: 2"], 415, "application/json"),
  ],
)
def test_body_headers_are_checked_before_the_body_is_read(server, lines, status, match):
  # The body is never sent: an answer proves nothing waited for it (today -1 reads to the end of the
  # stream and a missing length reads nothing and answers 400 about JSON).
  got, _, out = raw_case(server, head(server, lines))
  assert got == status and match in out["error"], (got, out)


@pytest.mark.parametrize(
  "host,status",
  [("evil.example:{port}", 421), ("127.0.0.1:1", 421), ("localhost:{port}", 200), (None, 400)],
)
def test_host_header_must_name_this_server(server, host, status):
  host = host.format(port=port_of(server)) if host else None
  got, _, out = raw_case(server, head(server, ["Connection: close"], "GET", "/api/info", host=host))
  assert got == status, (got, out)


def test_no_cors_headers_by_default(server):
  origin = ["Origin: http://evil.example", "Connection: close"]
  got, headers, _ = raw_case(server, head(server, origin + ["Access-Control-Request-Method: POST"], "OPTIONS"))
  assert got == 403 and "access-control-allow-origin" not in headers
  got, headers, _ = raw_case(server, head(server, origin, "GET", "/api/info"))
  assert got == 200 and "access-control-allow-origin" not in headers


def test_allow_origin_names_the_one_origin(make):
  _, url = make(allow_origin="http://app.example:3000")
  pre = ["Access-Control-Request-Method: POST", "Access-Control-Request-Headers: content-type"]
  got, headers, _ = raw_case(url, head(url, ["Origin: http://app.example:3000"] + pre, "OPTIONS"))
  assert got == 204 and headers["access-control-allow-origin"] == "http://app.example:3000"
  assert "POST" in headers["access-control-allow-methods"] and "Content-Type" in headers["access-control-allow-headers"]
  got, headers, _ = raw_case(url, head(url, ["Origin: http://other.example"] + pre, "OPTIONS"))
  assert got == 403 and "access-control-allow-origin" not in headers
  body = GOOD
  lines = ["Origin: http://app.example:3000", "Content-Type: application/json", f"Content-Length: {len(body)}"]
  got, headers, out = raw_case(url, head(url, lines) + body)
  assert got == 200 and headers["access-control-allow-origin"] == "http://app.example:3000", out


def test_data_url_without_comma_is_a_400(server):
  got, out = post(server, json.dumps({"image": "data:image/png;base64", "prompts": ["a"]}).encode())
  assert got == 400 and "no ','" in out["error"], out  # today: IndexError, a 500
  served_in_time(server)


def png_header_only(width: int, height: int) -> bytes:
  """A PNG whose header says width x height, with no pixel data (nothing to decode)."""

  def chunk(kind, data):
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

  ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
  return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_pixel_count_is_checked_from_the_header_before_decoding(server):
  # A real 12000x12000 PNG (~150 KB; today it decodes to 1.7 GB), and a header alone.
  buf = io.BytesIO()
  Image.new("1", (12000, 12000)).save(buf, "PNG")
  for raw in (buf.getvalue(), png_header_only(9000, 9000)):
    body = json.dumps({"image": base64.b64encode(raw).decode(), "prompts": ["a"]}).encode()
    start = time.monotonic()
    got, out = post(server, body)
    assert got == 413 and "megapixels" in out["error"] and time.monotonic() - start < 1.0, out
  served_in_time(server)


@pytest.mark.parametrize(
  "prompts,match",
  [
    (["x" * 301], "prompt 1 has 301 characters"),
    (["y", "x" * (512 << 10)], "prompt 2 has"),
    (["p"] * 11, "at most 10"),
  ],
)
def test_prompts_are_capped(server, prompts, match):
  body = json.dumps({"image": png_b64(np.zeros((8, 8, 3), np.uint8)), "prompts": prompts}).encode()
  start = time.monotonic()
  got, out = post(server, body)
  assert got == 400 and match in out["error"] and time.monotonic() - start < 1.0, out
  served_in_time(server)


def test_overlay_and_masks_are_drawn_downscaled(server):
  # Today a 3000-pixel-wide upload is drawn (and sent back, per prompt) at 3000 wide.
  status, out = post(
    server, json.dumps({"image": png_b64(np.zeros((60, 3000, 3), np.uint8)), "prompts": ["a", "b"]}).encode()
  )
  assert status == 200 and out["size"] == [2048, 41] and "downscaled to 2048x41" in out["notes"][0], out
  assert decode_png(out["overlay"]).size == (2048, 41) and decode_png(out["masks"][1]["mask"]).size == (2048, 41)


def test_deeply_nested_json_is_a_400(server):
  got, out = post(server, b"[" * 100_000 + b"]" * 100_000)
  assert got == 400 and "not JSON" in out["error"], out


def server_threads() -> int:
  return sum("process_request_thread" in t.name for t in threading.enumerate())


def test_half_open_connections_are_capped_and_do_not_lock_others_out(make):
  # Today each connection holds a thread of its own, for as long as the client likes.
  srv, url = make(limits=ServerLimits(max_connections=8))
  socks = []
  try:
    for _ in range(60):
      s = connect(url)
      s.sendall(b"POST /api/segment HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the rest
      socks.append(s)
    time.sleep(0.3)
    assert server_threads() <= 8
    served_in_time(url)  # the oldest half-open connection makes room
    assert server_threads() <= 8
  finally:
    for s in socks:
      s.close()


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
  """Whether the server ends the connection (any answer read and dropped) within `timeout`."""
  sock.settimeout(timeout)
  try:
    while sock.recv(1 << 16):
      pass
  except ConnectionResetError:
    pass
  except TimeoutError:
    return False
  return True


def test_a_stalled_body_is_dropped(make):
  srv, url = make(limits=ServerLimits(socket_timeout_s=1, read_timeout_s=2))
  lines = ["Content-Type: application/json", "Content-Length: 1000"]
  with connect(url) as stalled, connect(url) as dripping:
    start = time.monotonic()
    stalled.sendall(head(url, lines) + b'{"image": ')
    dripping.sendall(head(url, lines) + b"{")
    served_in_time(url)
    for _ in range(8):  # a byte each 0.4 s: never silent for a second, yet cut at the 2 s deadline
      time.sleep(0.4)
      try:
        dripping.sendall(b" ")
      except OSError:
        break
    for sock in (stalled, dripping):
      assert closed_by_server(sock, 5)
    assert time.monotonic() - start < 4.5  # today both hold a thread for as long as they like
    served_in_time(url)


def blocking(srv):
  """Make the server's worker wait on an event for prompts named "block"."""
  segmenter = srv.RequestHandlerClass.segmenter
  run, release = segmenter.run, threading.Event()

  def slow_run(job):
    if job.prompts == ["block"]:
      release.wait(20)
    return run(job)

  segmenter.run = slow_run
  return release


def post_async(url, prompts):
  body = json.dumps({"image": png_b64(np.zeros((16, 16, 3), np.uint8)), "prompts": prompts}).encode()
  results = []
  thread = threading.Thread(target=lambda: results.append(post(url, body)), daemon=True)
  thread.start()
  return thread, results


def test_a_full_queue_is_a_503_with_retry_after(make):
  srv, url = make(limits=ServerLimits(workers=1, queue_size=1, retry_after_s=3))
  release = blocking(srv)
  running, _ = post_async(url, ["block"])
  time.sleep(0.3)
  queued, queued_result = post_async(url, ["block"])
  time.sleep(0.3)
  body = GOOD
  lines = ["Content-Type: application/json", f"Content-Length: {len(body)}", "Connection: close"]
  with connect(url) as sock:
    sock.sendall(head(url, lines) + body)
    status, headers, out = response(sock)
  assert status == 503 and headers["retry-after"] == "3" and "busy" in out["error"], out
  release.set()
  running.join(5)
  queued.join(5)
  assert queued_result[0][0] == 200
  served_in_time(url)


def test_connections_beyond_the_cap_get_a_503_when_none_can_be_cut(make):
  srv, url = make(limits=ServerLimits(workers=1, queue_size=4, max_connections=2, retry_after_s=4))
  release = blocking(srv)
  busy = [post_async(url, ["block"]) for _ in range(2)]  # both connections wait on the model: not cut
  time.sleep(0.5)
  try:
    with connect(url) as sock:
      sock.sendall(head(url, ["Connection: close"], "GET", "/api/info"))
      status, headers, _ = response(sock)
    assert status == 503 and headers["retry-after"] == "4"
  finally:
    release.set()
  for thread, results in busy:
    thread.join(5)
    assert results[0][0] == 200
  served_in_time(url)


def test_the_upload_budget_is_charged_as_bytes_arrive(make):
  """Four trickling clients declaring large bodies used to reserve the whole in-flight budget up front,
  so every honest uploader got a 503."""
  srv, url = make(limits=ServerLimits(max_request_bytes=1 << 20, max_body_bytes_in_flight=2 << 20))
  lines = ["Content-Type: application/json", f"Content-Length: {1 << 20}"]
  socks = [connect(url) for _ in range(4)]
  try:
    for s in socks:
      s.sendall(head(url, lines) + b'{"image": "')
    time.sleep(0.3)
    for _ in range(3):
      served_in_time(url)
    assert srv.body_bytes < 64 << 10  # what the trickling clients sent, not what they declared
  finally:
    for s in socks:
      s.close()


def test_an_upload_slower_than_the_minimum_rate_is_a_408(make):
  srv, url = make(limits=ServerLimits(socket_timeout_s=0.5, read_timeout_s=20, min_upload_bytes_per_s=1000))
  lines = ["Content-Type: application/json", "Content-Length: 100000"]
  with connect(url) as sock:
    sock.sendall(head(url, lines))
    start = time.monotonic()
    try:
      for _ in range(20):  # 50 bytes every 0.2 s: never silent, 250 bytes/s
        sock.sendall(b" " * 50)
        time.sleep(0.2)
    except OSError:
      pass
    status, _, out = response(sock)
  assert status == 408 and "too slow" in out["error"], out
  assert time.monotonic() - start < 3


def test_idle_connections_are_cut_before_uploads_making_progress(make):
  srv, url = make(limits=ServerLimits(max_connections=3, read_timeout_s=20))
  body = GOOD
  lines = ["Content-Type: application/json", f"Content-Length: {len(body)}", "Connection: close"]
  with connect(url) as uploading:
    uploading.sendall(head(url, lines) + body[:100])  # the oldest connection, and making progress
    time.sleep(0.2)
    idle = [connect(url) for _ in range(12)]  # a flood that never sends a byte
    try:
      time.sleep(0.5)
      uploading.sendall(body[100:])
      status, _, out = response(uploading)
      assert status == 200, out
    finally:
      for s in idle:
        s.close()
  served_in_time(url)


def test_garbage_gets_a_status_line_and_unreadable_images_no_reprs(server):
  with connect(server) as sock:
    sock.sendall(b"\x16\x03\x01garbage bytes\r\n\r\n")
    data = sock.recv(4096)
  assert data.startswith(b"HTTP/1.0 400 "), data[:80]
  body = json.dumps({"image": base64.b64encode(b"not an image at all").decode(), "prompts": ["a"]}).encode()
  status, out = post(server, body)
  assert status == 400 and "cannot read the upload as an image" in out["error"]
  assert "object at 0x" not in out["error"], out


def test_a_failed_connection_is_one_log_line(make, capsys):
  srv, _ = make()
  srv.quiet = False
  try:
    raise ConnectionResetError(104, "Connection reset by peer")
  except ConnectionResetError:
    srv.handle_error(None, ("127.0.0.1", 5555))
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "127.0.0.1: connection dropped: ConnectionResetError" in err
