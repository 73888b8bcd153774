"""The Gradio app (`clipseg-jax demo-app`, app.py): its predict function called directly (text, visual and
mixed prompts, downloads, limits), the launch options, and the page end to end in headless Chromium
(upload, a text prompt, a visual prompt painted with the brush, one result layer per prompt), with a
screenshot for people to look at."""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # tests never reach the network

import io
import shutil
import socket
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipseg_jax.prompts import Mixed
from clipseg_jax.web import app_inputs, gradio_app
from clipseg_jax.web.gradio_app import AppLimits, AppSegmenter, InputError, painted_mask, split_prompts

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCREENSHOT = Path(os.environ.get("CLIPSEG_ARTIFACTS", "out/test-artifacts")) / "gradio_app.png"


def scene(h=48, w=64, seed=0) -> np.ndarray:
  """A flat background with a red block: something to paint."""
  image = np.full((h, w, 3), 90, np.uint8) + np.random.RandomState(seed).randint(0, 20, (h, w, 3)).astype(np.uint8)
  image[h // 4 : h // 2, w // 4 : w // 2] = (220, 30, 30)
  return image


def editor_value(image: np.ndarray, box=(10, 20, 12, 30)) -> dict:
  """What gr.ImageEditor passes (type="numpy", image_mode="RGBA"): the background and a painted layer."""
  background = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], -1)
  layer = np.zeros(image.shape[:2] + (4,), np.uint8)
  y0, y1, x0, x1 = box
  layer[y0:y1, x0:x1] = (255, 0, 255, 255)
  return {"background": background, "layers": [layer], "composite": background}


@pytest.fixture(scope="module")
def segmenter(tiny_model, tmp_path_factory):
  limits = AppLimits(max_prompts=4, max_prompt_chars=30)
  # warm_up=False: the tests compile what they use
  return AppSegmenter(tiny_model, limits, tmp_path_factory.mktemp("gradio"), warm_up=False)


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> str:
  path = tmp_path_factory.mktemp("photo") / "photo.png"
  Image.fromarray(scene()).save(path)
  return str(path)


def test_split_prompts_and_painted_mask():
  assert split_prompts("a cat, a dog\n\n a cat \n,the sofa") == ["a cat", "a dog", "the sofa"]
  assert split_prompts(None) == []
  rgba = np.zeros((4, 6, 4), np.uint8)
  rgba[1:3, 2:4, 3] = 128  # alpha only: the colour does not matter
  other = np.zeros((2, 3, 4), np.uint8)
  other[0, 0, 3] = 255  # a smaller canvas: resized (nearest) to the background
  mask = painted_mask([rgba, other], (4, 6))
  want = np.zeros((4, 6), bool)
  want[1:3, 2:4] = True
  want[0:2, 0:2] = True
  np.testing.assert_array_equal(mask, want)


def test_text_visual_and_mixed_prompts(segmenter, photo, tiny_model):
  image = scene()
  support = scene(seed=1)
  value = editor_value(support)
  r = segmenter(photo, "a cat\na dog", value, "a red block", 0.3, gradio_app.SOFT)
  labels = [label for _, label in r.layers]
  assert labels == ["a cat", "a dog", "a red block + visual prompt (text weight 0.30)"]
  assert len(set(r.colors.values())) == 3 and set(r.colors) == set(labels)
  mask = painted_mask(value["layers"], support.shape[:2])
  want = tiny_model.predict(image, ["a cat", "a dog", Mixed("a red block", support, mask, text_weight=0.3)])[0]
  got = np.stack([m for m, _ in r.layers])
  np.testing.assert_allclose(got, want, atol=1e-6)  # the page shows what predict computes
  assert r.image.shape == image.shape
  # The downloads: the zip first (a PNG per prompt and the overlay), then the PNGs themselves.
  assert Path(r.files[0]).name == "clipseg_masks.zip" and len(r.files) == 4
  with zipfile.ZipFile(r.files[0]) as z:
    assert sorted(z.namelist()) == sorted([Path(f).name for f in r.files[1:]] + ["overlay.png"])
  png = np.asarray(Image.open(r.files[3]), np.float32) / 255
  assert np.abs(png - want[2]).max() <= 0.5 / 255 + 1e-6

  # A visual prompt alone, thresholded: binary layers.
  r = segmenter(photo, "", value, "", 0.5, 0.5)
  assert [label for _, label in r.layers] == [gradio_app.VISUAL_LABEL]
  want = tiny_model.predict(image, [(support, mask)])[0, 0] > 0.5
  np.testing.assert_array_equal(r.layers[0][0], want.astype(np.float32))
  assert "threshold 0.5" in r.notes
  # The visual prompt as the model sees it: crop_blur_highlight's pixels, un-normalised for people.
  from clipseg_jax.prompts import crop_blur_highlight

  pixels = crop_blur_highlight(support, mask, tiny_model.image_size)
  seen = np.clip(np.round((pixels * [0.229, 0.224, 0.225] + [0.485, 0.456, 0.406]) * 255), 0, 255)
  np.testing.assert_array_equal(r.support_view, seen.astype(np.uint8))
  assert "as the model sees it" in r.notes and "paint more tightly" in r.notes
  assert segmenter(photo, "a cat", None, "", 0.5, 0.5).support_view is None  # text only: nothing to show


@pytest.mark.parametrize(
  "text,support,mix,match",
  [
    ("", None, "", "enter a text prompt"),
    ("a, b, c, d, e", None, "", "5 prompts; the limit is 4"),
    ("x" * 31, None, "", "longer than 30 characters"),
    ("a", None, "mixed text", "needs a support image"),
    ("a", {"background": scene(), "layers": [], "composite": None}, "", "no painted mask"),
  ],
)
def test_bad_requests(segmenter, photo, text, support, mix, match):
  with pytest.raises(InputError, match=match):
    segmenter(photo, text, support, mix, 0.5, 0.5)


def test_expressions_label_map_and_instances(segmenter, photo, tiny_model):
  """A line of the text box may be an expression over prompts and the painted support ($support); the label
  map and the instances' boxes come on request."""
  assert split_prompts('"a, b" - "c"\nx, y') == ['"a, b" - "c"', "x", "y"]  # an expression line stays whole
  support = scene(seed=1)
  value = editor_value(support)
  r = segmenter(photo, '"a cat" - $support\na dog', value, "", 0.5, gradio_app.SOFT, True, True)
  labels = [label for _, label in r.layers]
  assert labels == ['"a cat" - $support', "a dog", gradio_app.VISUAL_LABEL]
  mask = painted_mask(value["layers"], support.shape[:2])
  want = tiny_model.predict_expressions(scene(), ['"a cat" - $s', "a dog", "$s"], operands={"s": (support, mask)})[0]
  np.testing.assert_allclose(np.stack([m for m, _ in r.layers]), want, atol=1e-6)
  assert r.label_view is not None and r.label_view.shape == scene().shape
  for box, label in r.boxes:
    x0, y0, x1, y1 = box
    assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 48 and label.split(" #")[0] in labels
  assert "instance(s) at threshold 0.5" in r.notes
  with pytest.raises(InputError, match="position"):
    segmenter(photo, '"a cat" -', None, "", 0.5, 0.5)
  with pytest.raises(InputError, match=r"\$support is not bound"):
    segmenter(photo, '"a cat" - $support', None, "", 0.5, 0.5)  # no support painted


def test_large_images_are_bounded(tiny_model, tmp_path):
  s = AppSegmenter(tiny_model, AppLimits(max_side=32, max_pixels=10_000), tmp_path, warm_up=False)
  with pytest.raises(InputError, match="choose an image"):
    s(None, "a")
  big = tmp_path / "big.png"
  Image.new("RGB", (120, 90)).save(big)  # 10,800 pixels: refused from the header, before decoding
  with pytest.raises(InputError, match="megapixels"):
    s(str(big), "a")
  wide = tmp_path / "wide.png"
  Image.fromarray(scene(40, 80)).save(wide)  # 3,200 pixels, but wider than max_side: downscaled
  r = s(str(wide), "a", editor_value(scene(64, 64), (8, 40, 8, 40)))
  assert r.image.shape == (16, 32, 3) and r.layers[0][0].shape == (16, 32)
  assert "downscaled to 32x16" in r.notes and "the support image" in r.notes
  tiny_upload = AppSegmenter(tiny_model, AppLimits(max_upload_bytes=64), tmp_path, warm_up=False)
  with pytest.raises(InputError, match="larger than"):
    tiny_upload(str(wide), "a")
  with pytest.raises(ValueError, match="max_prompts must be positive"):
    AppLimits(max_prompts=0)


def test_old_downloads_are_pruned(tiny_model, tmp_path, photo, monkeypatch):
  monkeypatch.setattr(gradio_app, "KEEP_RESULTS", 2)
  s = AppSegmenter(tiny_model, out_dir=tmp_path, warm_up=False)
  folders = [Path(s(photo, "a").files[0]).parent for _ in range(3)]
  assert not folders[0].exists() and folders[1].exists() and folders[2].exists()


def test_cli_options_and_colab_share(monkeypatch, capsys):
  from clipseg_jax.cli import main as cli_main

  args = cli_main.build_parser().parse_args(["demo-app", "--port", "0", "--max-prompts", "3", "--no-share"])
  assert args.checkpoint == gradio_app.DEFAULT_CHECKPOINT == "embedded:synthetic"
  assert args.share is False and args.host == "127.0.0.1"
  from clipseg_jax.cli.demo_app import app_limits

  assert app_limits(args).max_prompts == 3
  monkeypatch.setitem(sys.modules, "gradio", None)  # not installed: one line naming the extra, before any loading
  assert cli_main.main(["demo-app", "--checkpoint", "/nonexistent"]) == 2
  assert "pip install 'clipseg-jax[demo] @ git+https://github.com/" in capsys.readouterr().err

  calls = []

  class FakeApp:
    def launch(self, **kwargs):
      calls.append(kwargs)

  monkeypatch.setattr(gradio_app, "build_app", lambda model, **kwargs: FakeApp())
  gradio_app.launch(model=object())
  assert calls[-1]["share"] is False and calls[-1]["max_file_size"] == AppLimits().max_upload_bytes
  monkeypatch.setitem(sys.modules, "google.colab", type(sys)("google.colab"))
  gradio_app.launch(model=object())
  assert calls[-1]["share"] is True  # a public link in Colab, where localhost cannot be reached
  gradio_app.launch(model=object(), share=False)
  assert calls[-1]["share"] is False


def test_build_app_with_offline_examples(segmenter):
  gr = pytest.importorskip("gradio")
  app = gradio_app.build_app(segmenter.model, name="tiny", segmenter=segmenter)
  assert isinstance(app, gr.Blocks)
  examples = list((segmenter.out_dir / "examples").glob("*.png"))
  assert len(examples) == 4 * len(app_inputs.EXAMPLE_SEEDS)  # query; support, painted layer, composite
  rows = gradio_app.example_inputs(segmenter.out_dir / "examples")
  query, text, editor, mix, _ = rows[0]
  r = segmenter(query, text, editor, mix, 0.5, 0.5)  # file paths, as the examples give them
  assert len(r.layers) == len(split_prompts(text)) + 1  # the example runs: texts and a mixed visual prompt


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(segmenter):
  pytest.importorskip("gradio")
  app = gradio_app.build_app(segmenter.model, name="tiny random-weight model", segmenter=segmenter)
  port = free_port()
  app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, share=False)
  yield f"http://127.0.0.1:{port}/"
  app.close()


@pytest.mark.skipif(
  not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
  reason="Debian's chromium and chromium-driver are not installed (make test installs them)",
)
@pytest.mark.slow  # starts a browser
def test_app_in_headless_chromium(app_url, tmp_path):
  from selenium import webdriver
  from selenium.webdriver.chrome.service import Service
  from selenium.webdriver.common.action_chains import ActionChains
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support import expected_conditions as EC
  from selenium.webdriver.support.ui import WebDriverWait

  from clipseg_jax.input_pipeline.synthetic import make_scene

  query, support = tmp_path / "query.png", tmp_path / "support.png"
  Image.fromarray(make_scene(np.random.default_rng(3), 256)[0]).save(query)
  Image.fromarray(make_scene(np.random.default_rng(4), 256)[0]).save(support)
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  profile = tempfile.mkdtemp()
  for flag in (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # the page must not need the network
    f"--user-data-dir={profile}",
    "--window-size=1300,1250",
  ):
    options.add_argument(flag)
  driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
  try:
    driver.get(app_url)
    wait = WebDriverWait(driver, 90)
    run = wait.until(EC.element_to_be_clickable((By.ID, "run")))
    # A bad request first: its message shows on the page, and the page keeps working.
    run.click()
    wait.until(EC.text_to_be_present_in_element((By.TAG_NAME, "body"), "choose an image to segment"))
    driver.find_element(By.CSS_SELECTOR, "#query input[type=file]").send_keys(str(query))
    driver.find_element(By.CSS_SELECTOR, "#text-prompts textarea").send_keys("red square\nred star")
    driver.find_element(By.CSS_SELECTOR, "#support input[type=file]").send_keys(str(support))
    brush = wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "#support button[aria-label=Brush]")))
    brush.click()
    canvas = max(driver.find_elements(By.CSS_SELECTOR, "#support canvas"), key=lambda c: c.size["width"])
    stroke = ActionChains(driver).move_to_element_with_offset(canvas, -40, 10).click_and_hold()
    for _ in range(4):
      stroke = stroke.move_by_offset(20, 5)
    stroke.release().perform()
    run.click()
    legend = (By.CSS_SELECTOR, "#result .legend-item")
    wait.until(lambda d: len(d.find_elements(*legend)) == 3)
    assert [e.text for e in driver.find_elements(*legend)] == ["red square", "red star", gradio_app.VISUAL_LABEL]
    layers = driver.find_elements(By.CSS_SELECTOR, "#result img.mask")
    assert len(layers) == 3 and all(e.is_displayed() for e in layers)
    assert all(driver.execute_script("return arguments[0].naturalWidth", e) == 256 for e in layers)
    downloads = ["".join(e.text.split()) for e in driver.find_elements(By.CSS_SELECTOR, "#masks tr")]
    assert len(downloads) == 4 and downloads[0].startswith("clipseg_masks.zip"), downloads
    link = driver.find_element(By.CSS_SELECTOR, "#masks a[href*='clipseg_masks.zip']").get_attribute("href")
    with urllib.request.urlopen(link, timeout=30) as response:  # the zip downloads, and holds every mask
      assert len(zipfile.ZipFile(io.BytesIO(response.read())).namelist()) == 4
    assert "3 prompt(s)" in driver.find_element(By.ID, "notes").text
    driver.execute_script("window.scrollTo(0, 0)")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(SCREENSHOT))
    # An example (generated offline at start-up) fills every input, its painted support included, and runs.
    driver.find_elements(By.CSS_SELECTOR, "#examples tbody tr")[0].click()
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#mix-text input, #mix-text textarea").get_attribute("value"))
    run.click()
    wait.until(lambda d: any("+ visual prompt" in e.text for e in d.find_elements(*legend)))
  finally:
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def png_header(width: int, height: int) -> bytes:
  """A PNG whose header says width x height, with no pixel data (nothing to decode)."""
  import zlib

  def chunk(kind, data):
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

  ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
  return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_support_images_are_checked_before_decoding(tiny_model, tmp_path, photo):
  """The support image's pixel count was never checked: a small PNG decoding to 12000x12000 cost
  gigabytes. Paths are refused from their header, arrays by their size, the editor's uploads before
  gradio decodes them."""
  gr = pytest.importorskip("gradio")
  from gradio.data_classes import FileData

  s = AppSegmenter(tiny_model, AppLimits(max_pixels=1_000_000), tmp_path, warm_up=False)
  bomb = tmp_path / "bomb.png"
  bomb.write_bytes(png_header(12000, 12000))
  editor = {"background": str(bomb), "layers": [str(bomb)], "composite": str(bomb)}
  with pytest.raises(InputError, match=r"the support image: the image is 12000x12000 \(144.0 megapixels\)"):
    s(photo, "a", editor)
  big = {"background": np.zeros((1100, 1000, 3), np.uint8), "layers": [], "composite": None}
  with pytest.raises(InputError, match="support image is larger than 1 megapixels"):
    s(photo, "a", big)
  component = gradio_app.bound_editor(gr, gr.ImageEditor(type="numpy", image_mode="RGBA"), 1_000_000)
  with pytest.raises(gr.Error, match="12000x12000"):
    component.convert_and_format_image(FileData(path=str(bomb)))
  small = tmp_path / "small.png"
  Image.fromarray(scene()).save(small)
  assert component.convert_and_format_image(FileData(path=str(small))).shape == (48, 64, 4)


def test_the_support_editor_is_bounded_with_a_small_brush(segmenter):
  gr = pytest.importorskip("gradio")
  app = gradio_app.build_app(None, segmenter=segmenter, examples=False)
  (editor,) = [b for b in app.blocks.values() if isinstance(b, gr.ImageEditor)]
  assert editor.brush.default_size == gradio_app.BRUSH_SIZE  # gradio's "auto" brush spills past objects
  from gradio.data_classes import FileData

  big = Path(segmenter.out_dir) / "bomb.png"
  big.write_bytes(png_header(12000, 12000))
  with pytest.raises(gr.Error, match="megapixels") as e:
    editor.convert_and_format_image(FileData(path=str(big)))
  assert e.value.print_exception is False  # a user's mistake: a message on the page, no traceback in the log
