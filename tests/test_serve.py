"""`clipseg-jax serve`: the JSON API (good and bad requests, the server keeps serving) and the page
end to end in headless Chromium, with a screenshot for people to look at."""

import base64
import io
import json
import os
import shutil
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipseg_jax.web.server import make_server

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
