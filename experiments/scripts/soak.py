"""A bounded soak of `clipseg-jax serve`: a tiny random-weight model served on 127.0.0.1 in a child
process, mixed good and bad requests from several threads plus a pool of half-open connections, for
a fixed time. Reports requests served, answers by status (per case), p50/p99 latency of the good
requests, and the server's RSS: at rest, at peak and after (it should come back near its baseline).

  .venv/bin/python experiments/scripts/soak.py --seconds 60 [--threads 6] [--half-open 40] [--json out.json]
"""

from __future__ import annotations

import argparse
import base64
import collections
import http.client
import io
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zlib

import numpy as np
from PIL import Image


def tiny_checkpoint(directory: str) -> str:
  import jax

  from clipseg_jax import ClipSeg
  from clipseg_jax.config import tiny_config
  from clipseg_jax.models.clipseg import init_params

  config = tiny_config(use_complex_transposed_convolution=True)
  ClipSeg(config, init_params(config, jax.random.PRNGKey(0))).export_hf(directory)
  return directory


def png_b64(image: Image.Image, data_url: bool = True) -> str:
  buf = io.BytesIO()
  image.save(buf, "PNG")
  text = base64.b64encode(buf.getvalue()).decode()
  return "data:image/png;base64," + text if data_url else text


def png_header_only(width: int, height: int) -> bytes:
  def chunk(kind, data):
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

  ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
  return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def rss_mb(pid: int) -> float:
  with open(f"/proc/{pid}/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024
  return float("nan")


class Client:
  def __init__(self, port: int, seed: int):
    self.port, self.rng = port, random.Random(seed)
    self.host = f"127.0.0.1:{port}"

  def raw(self, request: bytes, timeout: float = 30) -> int:
    with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
      sock.sendall(request)
      r = http.client.HTTPResponse(sock)
      r.begin()
      r.read()
      return r.status

  def post(self, body: bytes, content_type="application/json", host=None, timeout: float = 60) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
    try:
      headers = {"Content-Type": content_type, "Host": host or self.host}
      conn.request("POST", "/api/segment", body=body, headers=headers)
      r = conn.getresponse()
      r.read()
      return r.status
    finally:
      conn.close()

  def head(self, lines) -> bytes:
    return ("\r\n".join(["POST /api/segment HTTP/1.1", f"Host: {self.host}", *lines]) + "\r\n\r\n").encode()


def cases(bomb_b64: str):
  """name -> (weight, is_good, function(client) -> status)."""

  def good(c: Client):
    w, h = c.rng.randint(32, 640), c.rng.randint(32, 480)
    arr = np.random.RandomState(c.rng.randrange(1 << 30)).randint(0, 256, (h, w, 3), np.uint8)
    prompts = c.rng.sample(["a cat", "a dog", "the sky", "a red square", "grass"], c.rng.randint(1, 3))
    return c.post(json.dumps({"image": png_b64(Image.fromarray(arr)), "prompts": prompts}).encode())

  def good_large(c: Client):
    return c.post(
      json.dumps({"image": png_b64(Image.new("RGB", (3000, 2000), (90, 30, 200))), "prompts": ["a"]}).encode()
    )

  small = png_b64(Image.new("RGB", (16, 16)))

  def body(**kw):
    return json.dumps({"image": small, "prompts": ["a"], **kw}).encode()

  return {
    "good": (10, True, good),
    "good_large": (1, True, good_large),
    "bad_json": (1, False, lambda c: c.post(b"{nope")),
    "bad_base64": (1, False, lambda c: c.post(body(image="data:image/png;base64,@@@"))),
    "data_url_no_comma": (1, False, lambda c: c.post(body(image="data:image/png;base64"))),
    "negative_length": (1, False, lambda c: c.raw(c.head(["Content-Type: application/json", "Content-Length: -1"]))),
    "no_length": (1, False, lambda c: c.raw(c.head(["Content-Type: application/json"]))),
    "over_limit": (1, False, lambda c: c.raw(c.head(["Content-Type: application/json", "Content-Length: 999999999"]))),
    "text_plain": (1, False, lambda c: c.post(body(), content_type="text/plain")),
    "wrong_host": (1, False, lambda c: c.post(body(), host="evil.example")),
    "pixel_bomb": (1, False, lambda c: c.post(body(image=bomb_b64))),
    "header_only_bomb": (
      1,
      False,
      lambda c: c.post(body(image=base64.b64encode(png_header_only(20000, 20000)).decode())),
    ),
    "long_prompts": (1, False, lambda c: c.post(body(prompts=["x" * (512 << 10)] * 2))),
    "many_prompts": (1, False, lambda c: c.post(body(prompts=["p"] * 50))),
    "deep_json": (1, False, lambda c: c.post(b"[" * 200_000 + b"]" * 200_000)),
    "bad_threshold": (1, False, lambda c: c.post(body(threshold=7))),
  }


def half_open_pool(port: int, n: int, stop: threading.Event, stats: collections.Counter):
  """Keep `n` connections that send part of a request and stall; reopen those the server cuts."""
  socks: list[socket.socket] = []
  while not stop.is_set():
    alive = []
    for s in socks:
      try:
        s.setblocking(False)
        if s.recv(1) == b"":  # closed by the server
          stats["half_open_cut"] += 1
          s.close()
          continue
      except BlockingIOError:
        pass
      except OSError:
        stats["half_open_cut"] += 1
        s.close()
        continue
      alive.append(s)
    socks = alive
    while len(socks) < n and not stop.is_set():
      try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"POST /api/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n")
        socks.append(s)
        stats["half_open_opened"] += 1
      except OSError:
        stats["half_open_refused"] += 1
        break
    stop.wait(0.5)
  for s in socks:
    s.close()


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--seconds", type=float, default=120)
  p.add_argument("--threads", type=int, default=6, help="client threads sending good and bad requests")
  p.add_argument("--half-open", type=int, default=40, help="connections kept half-open throughout")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--json", default=None, help="write the report here too")
  p.add_argument("server_args", nargs="*", help="extra `clipseg-jax serve` flags (after --)")
  args = p.parse_args(argv)

  with tempfile.TemporaryDirectory() as tmp:
    ckpt = tiny_checkpoint(os.path.join(tmp, "tiny"))
    cmd = [sys.executable, "-m", "clipseg_jax.cli.main", "serve", "--checkpoint", ckpt, "--port", "0"]
    server = subprocess.Popen(cmd + args.server_args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
      line = server.stdout.readline()
      match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
      if not match:
        raise SystemExit(f"the server did not start: {line!r}")
      port = int(match.group(1))
      report = soak(server.pid, port, args)
    finally:
      server.terminate()
      server.wait(30)
  print(json.dumps(report, indent=1))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(report, f, indent=1)


def soak(pid: int, port: int, args) -> dict:
  buf = io.BytesIO()
  Image.new("1", (12000, 12000)).save(buf, "PNG")
  table = cases(base64.b64encode(buf.getvalue()).decode())
  names = list(table)
  weights = [table[n][0] for n in names]
  warm = Client(port, -1)
  for _ in range(3):
    assert table["good"][2](warm) == 200
  time.sleep(1)
  baseline = rss_mb(pid)

  stop = threading.Event()
  peak = [baseline]

  def sample():
    while not stop.is_set():
      peak[0] = max(peak[0], rss_mb(pid))
      stop.wait(0.1)

  lock = threading.Lock()
  by_case: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  good_latency: list[float] = []
  pool_stats: collections.Counter = collections.Counter()
  deadline = time.monotonic() + args.seconds

  def client(seed):
    c = Client(port, seed)
    while time.monotonic() < deadline:
      name = c.rng.choices(names, weights)[0]
      _, is_good, fn = table[name]
      start = time.monotonic()
      try:
        status = fn(c)
      except (OSError, http.client.HTTPException) as e:
        status = type(e).__name__
      took = time.monotonic() - start
      with lock:
        by_case[name][str(status)] += 1
        if is_good and status == 200:
          good_latency.append(took)

  threads = [threading.Thread(target=sample, daemon=True)]
  threads.append(threading.Thread(target=half_open_pool, args=(port, args.half_open, stop, pool_stats), daemon=True))
  threads += [threading.Thread(target=client, args=(args.seed + i,), daemon=True) for i in range(args.threads)]
  start = time.monotonic()
  for t in threads:
    t.start()
  for t in threads[2:]:
    t.join()
  stop.set()
  for t in threads[:2]:
    t.join(10)
  elapsed = time.monotonic() - start
  time.sleep(5)  # let the server settle
  after = rss_mb(pid)
  try:
    server_threads = len(os.listdir(f"/proc/{pid}/task"))
  except OSError:
    server_threads = None

  by_status: collections.Counter = collections.Counter()
  for counts in by_case.values():
    by_status.update(counts)
  lat = np.array(good_latency) if good_latency else np.array([np.nan])
  return {
    "seconds": round(elapsed, 1),
    "threads": args.threads,
    "half_open": args.half_open,
    "requests": sum(by_status.values()),
    "good_served": len(good_latency),
    "by_status": dict(sorted(by_status.items())),
    "by_case": {k: dict(sorted(v.items())) for k, v in sorted(by_case.items())},
    "good_latency_s": {"p50": round(float(np.percentile(lat, 50)), 3), "p99": round(float(np.percentile(lat, 99)), 3)},
    "half_open_pool": dict(pool_stats),
    "rss_mb": {"baseline": round(baseline, 1), "peak": round(peak[0], 1), "after": round(after, 1)},
    "server_os_threads_after": server_threads,
  }


if __name__ == "__main__":
  main()
