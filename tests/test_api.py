"""The user-facing API: predict, prompt kinds, shared image work, and clear errors for bad input."""

import logging
import re

import jax
import numpy as np
import pytest
from PIL import Image

from clipseg_jax import prompts


def image(h=70, w=90, seed=0):
  return np.random.RandomState(seed).randint(0, 256, (h, w, 3), np.uint8)


def count_calls(monkeypatch, model, stage: str, size=lambda *args: 1) -> list:
  """Wraps one of the model's stages; the returned list grows by `size(*args)` per call."""
  calls, fn = [], getattr(model, stage)

  def counted(*args):
    calls.append(size(*args))
    return fn(*args)

  monkeypatch.setattr(model, stage, counted)
  return calls


class Compilations(logging.Handler):
  """Counts JAX's "Compiling jit(NAME)" log lines (`jax.log_compiles()`) per stage name."""

  def __init__(self):
    super().__init__()
    self.names = []

  def emit(self, record):
    match = re.match(r"Compiling jit\((clipseg_\w+)\)", record.getMessage())
    if match:
      self.names.append(match.group(1))


def test_predict_shapes_and_one_vision_pass(tiny_model, monkeypatch):
  vision = count_calls(monkeypatch, tiny_model, "_encode_image")
  probs = tiny_model.predict(image(), ["a cat", "a dog", "the sky on the left"])
  assert probs.shape == (1, 3, 70, 90) and probs.dtype == np.float32
  assert 0 <= probs.min() and probs.max() <= 1
  assert len(vision) == 1  # one image, three prompts: one vision-tower pass
  masks = tiny_model.predict([image(seed=i) for i in range(6)], ["a cat"], threshold=0.5, batch_size=4)
  assert masks.shape == (6, 1, 70, 90) and masks.dtype == bool
  assert len(vision) == 3  # six images four at a time: two more passes


def test_predict_matches_low_level_call(tiny_model):
  """predict's shared image work equals running the full model per (image, prompt); 3 prompts fill a
  bucket of 4, whose padding slot the decode loop skips."""
  from clipseg_jax import preprocess

  im = image(64, 64)
  texts = ["a cat", "a photo of a dog", "the sky"]
  probs = tiny_model.predict(Image.fromarray(im), texts)[0]
  pixels = np.repeat(preprocess.batch_pixels([im], tiny_model.image_size), len(texts), axis=0)
  tok = tiny_model.tokenizer(texts, padding=True, return_tensors="np")
  logits = np.asarray(tiny_model(pixels, input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]))
  want = np.stack([preprocess.resize_map(np.asarray(jax.nn.sigmoid(l)), 64, 64) for l in logits])
  np.testing.assert_allclose(probs, want, atol=2e-5)  # float reordering (chunked decode), ~1e-5


def test_predict_visual_and_mixed_prompts(tiny_model):
  support, mask = image(50, 60, 3), np.zeros((50, 60), bool)
  mask[10:30, 20:40] = True
  probs = tiny_model.predict(image(), ["a cat", (support, mask)])
  assert probs.shape == (1, 2, 70, 90)
  with pytest.raises(ValueError, match="support mask is 10x10 but its image is 60x50"):
    tiny_model.predict(image(), [(support, np.zeros((10, 10), bool))])


def test_mixed_prompt_interpolates_text_and_visual(tiny_model):
  support, mask = image(50, 60, 3), np.ones((50, 60), bool)
  t, v = np.asarray(tiny_model.encode_text(["a cat"])), np.asarray(tiny_model.encode_visual([(support, mask)]))
  got = np.asarray(tiny_model.encode_prompts([prompts.Mixed("a cat", support, mask, 0.3), "a cat", (support, mask)]))
  # (the visual tower ran on 2 supports here, 1 above: batch-dependent float rounding only)
  np.testing.assert_allclose(got[0], 0.3 * t[0] + 0.7 * v[0], atol=1e-5)
  np.testing.assert_array_equal(got[1], t[0])  # a pure text prompt is passed through unchanged
  np.testing.assert_allclose(got[2], v[0], atol=1e-5)
  with pytest.raises(ValueError, match="text_weight must be in"):
    prompts.Mixed("a cat", support, mask, 1.5)
  with pytest.raises(ValueError, match="prompt 0 must be a string"):
    tiny_model.encode_prompts([42])


def test_text_embeddings_are_cached(tiny_dir, monkeypatch):
  from clipseg_jax import load_model

  model = load_model(tiny_dir)
  encoded = count_calls(monkeypatch, model, "_encode_text_uncached", size=len)
  first = np.asarray(model.encode_text(["a cat", "a dog", "a cat"]))
  assert sum(encoded) == 2  # the repeated prompt is encoded once
  again = model.predict(image(), ["a dog", "a bird", "a cat"])
  assert sum(encoded) == 3  # only "a bird" is new
  np.testing.assert_array_equal(np.asarray(model.encode_text(["a dog"]))[0], first[1])
  np.testing.assert_array_equal(first[0], first[2])
  # Uncached, the same strings give the same embeddings (batch composition does not matter).
  fresh = np.asarray(model._encode_text_uncached(["a bird", "a cat"]))
  np.testing.assert_allclose(np.asarray(model.encode_text(["a bird", "a cat"])), fresh, atol=1e-6)
  # New weights invalidate the cache.
  import jax

  model.params = jax.tree.map(lambda x: x * 1.0, model.params)
  model.encode_text(["a cat"])
  assert sum(encoded) == 6  # 3 + the 2 encoded directly above + "a cat" again under new weights
  assert again.shape == (1, 3, 70, 90)


def test_predict_iter_streams_logits_and_downscales_huge_images(tiny_model, monkeypatch):
  from clipseg_jax import preprocess

  gen = (image(seed=s) for s in range(3))  # any iterable, read a batch at a time
  outs = list(tiny_model.predict_iter(gen, tiny_model.encode_text(["a cat", "a dog"]), batch_size=2))
  s = tiny_model.image_size
  assert [o["logits"].shape for o in outs] == [(2, s, s)] * 3 and outs[0]["masks"].shape == (2, 70, 90)
  np.testing.assert_allclose(
    preprocess.resize_map(np.asarray(jax.nn.sigmoid(outs[0]["logits"][1])), 70, 90), outs[0]["masks"][1], atol=1e-6
  )
  monkeypatch.setattr(preprocess, "MAX_SIDE", 45)
  with pytest.warns(UserWarning, match="downscaled to 45x35"):
    assert tiny_model.predict(image(), ["a cat"]).shape == (1, 1, 35, 45)


def test_interpolated_conditions(tiny_model):
  support, mask = image(50, 60, 3), np.ones((50, 60), bool)
  t, v = tiny_model.encode_text(["a cat"]), tiny_model.encode_visual([(support, mask)])
  mixed = prompts.interpolate(t, v, 0.25)
  np.testing.assert_allclose(mixed, 0.25 * np.asarray(t) + 0.75 * np.asarray(v), rtol=1e-6)
  probs = tiny_model.predict_conditions([image()], mixed)
  assert probs.shape == (1, 1, 70, 90)


def test_crop_blur_highlight():
  from clipseg_jax import preprocess

  im = np.full((40, 80, 3), 200, np.uint8)
  mask = np.zeros((40, 80), bool)
  mask[10:20, 30:50] = True
  out = prompts.crop_blur_highlight(im, mask, size=64)
  assert out.shape == (64, 64, 3) and out.dtype == np.float32  # normalised: the vision tower's input
  grey = preprocess.normalize(np.full(3, 200, np.uint8))
  np.testing.assert_allclose(out[32, 32], grey, atol=1e-6)  # the object is kept
  np.testing.assert_allclose(out[32, 0], 0.1 * grey, atol=1e-5)  # background x 0.1 towards the mean colour
  assert not out[:16].any() and not out[48:].any()  # 24 x 12 box padded square with 0 (the mean colour)
  assert prompts.mask_box(mask) == (9, 28, 21, 52)  # 10% context on each side (int() truncated)


@pytest.mark.parametrize(
  "kwargs,match",
  [
    (dict(pixel_values=np.zeros((1, 64, 48, 3))), "must be square"),
    (dict(pixel_values=np.zeros((1, 72, 72, 3))), "divisible by the patch size 16"),
    (dict(pixel_values=np.zeros((1, 3, 64, 64))), "NHWC with 3 channels"),
    (dict(pixel_values=np.zeros((2, 64, 64, 3)), input_ids=np.ones((3, 4), int)), r"one prompt per image"),
    (
      dict(pixel_values=np.zeros((2, 64, 64, 3)), conditional_pixel_values=np.zeros((1, 64, 64, 3))),
      "1 prompt images for 2 query images",
    ),
    (dict(pixel_values=np.zeros((1, 64, 64, 3))), "exactly one of"),
    (
      dict(
        pixel_values=np.zeros((1, 64, 64, 3)), input_ids=np.ones((1, 4), int), conditional_embeddings=np.zeros((1, 24))
      ),
      "exactly one of",
    ),
    (dict(pixel_values=np.zeros((1, 64, 64, 3)), conditional_embeddings=np.zeros((1, 7))), r"\[1, 24\]"),
  ],
)
def test_low_level_call_errors(tiny_model, kwargs, match):
  pixels = kwargs.pop("pixel_values")
  with pytest.raises(ValueError, match=match):
    tiny_model(pixels, **kwargs)


def test_predict_errors(tiny_model, monkeypatch):
  with pytest.raises(ValueError, match="no prompts"):
    tiny_model.predict(image(), [])
  with pytest.raises(ValueError, match="non-empty strings"):
    tiny_model.predict(image(), ["a cat", "  "])
  with pytest.raises(ValueError, match="no images"):
    tiny_model.predict([], ["a cat"])
  with pytest.raises(ValueError, match="zero size"):
    tiny_model.predict(Image.new("RGB", (0, 5)), ["a cat"])
  with pytest.raises(ValueError, match="uint8"):
    tiny_model.predict(np.zeros((8, 8, 3), np.float32), ["a cat"])
  vision = count_calls(monkeypatch, tiny_model, "_encode_image")
  for bad in (1.5, -0.1, "0.5", True):
    with pytest.raises(ValueError, match="threshold must be a probability"):
      tiny_model.predict(image(), ["a cat"], threshold=bad)
  assert not vision  # refused before any image work


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_image_modes(tiny_model, mode):
  im = Image.fromarray(image(30, 40)).convert(mode) if mode != "I;16" else Image.new("I;16", (40, 30), 300)
  assert tiny_model.predict(im, ["a cat"]).shape == (1, 1, 30, 40)


def test_exif_rotated_image_is_upright(tiny_model, tmp_path):
  """A photo stored sideways with EXIF orientation 6 is segmented (and sized) as it is shown."""
  from clipseg_jax.preprocess import load_image

  stored = Image.fromarray(image(30, 40))
  exif = Image.Exif()
  exif[0x0112] = 6  # rotate 90 degrees clockwise to display
  stored.save(tmp_path / "sideways.jpg", exif=exif)
  upright = load_image(tmp_path / "sideways.jpg")
  assert upright.size == (30, 40)
  with Image.open(tmp_path / "sideways.jpg") as raw:
    np.testing.assert_array_equal(np.asarray(upright), np.asarray(raw.transpose(Image.Transpose.ROTATE_270)))
    assert tiny_model.predict(raw, ["a cat"]).shape == (1, 1, 40, 30)


@pytest.mark.slow  # a second compile of every stage in bfloat16
def test_bfloat16_compute(tiny_dir, tiny_model):
  """dtype=bfloat16 computes in bf16 with float32 params and stays close to the float32 model."""
  import jax.numpy as jnp

  from clipseg_jax import load_model

  model = load_model(tiny_dir, dtype=jnp.bfloat16)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(model.params))
  pixels = np.random.RandomState(0).randn(2, 64, 64, 3).astype(np.float32)
  ids = np.array([[49406, 320, 2368, 49407], [49406, 320, 1125, 49407]])
  low = model(pixels, input_ids=ids)
  assert low.dtype == jnp.bfloat16
  want = np.asarray(tiny_model(pixels, input_ids=ids))
  assert np.abs(np.asarray(low, np.float32) - want).max() / np.abs(want).max() < 0.05


def test_float32_asks_for_full_matmul_precision(tiny_dir, tiny_model):
  """float32 models lower their matmuls at HIGHEST precision (GPUs would otherwise use TF32 and miss
  PyTorch's logits by ~3e-4); bf16 models keep the backend's default."""
  import jax.numpy as jnp

  from clipseg_jax import load_model

  ids, mask = jnp.array([[49406, 320, 2368, 49407]]), jnp.ones((1, 4), jnp.int32)
  assert "HIGHEST" in tiny_model._text.lower(tiny_model.params, ids, mask).as_text()
  low = load_model(tiny_dir, dtype=jnp.bfloat16)
  assert "HIGHEST" not in low._text.lower(low.params, ids, mask).as_text()


def test_params_live_on_the_device(tiny_model):
  """Host (numpy) params would be copied into every jitted call: loaded and reassigned params are
  device arrays."""
  leaves = jax.tree.leaves(tiny_model.params)
  assert leaves and all(isinstance(x, jax.Array) for x in leaves)
  tiny_model.params = jax.device_get(tiny_model.params)
  assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(tiny_model.params))


def test_prompt_counts_share_compilations(tiny_dir):
  """3 and 4 prompts (one bucket) and prompts of different lengths reuse the same compiled code."""
  from clipseg_jax import load_model

  model = load_model(tiny_dir)
  compiled = Compilations()
  logging.getLogger("jax").addHandler(compiled)
  try:
    with jax.log_compiles():
      model.predict(image(), ["a cat", "a dog", "a red car"])
      first = sorted(compiled.names)
      model.predict(image(), ["one", "two", "a somewhat longer prompt", "four"])  # all within 8 tokens
      assert sorted(compiled.names) == first == ["clipseg_decode", "clipseg_encode_image", "clipseg_text"]
      model.predict(image(), ["a"] * 5)  # a new bucket compiles once more (text and decode)
      assert sorted(compiled.names[3:]) == ["clipseg_decode", "clipseg_text"]
  finally:
    logging.getLogger("jax").removeHandler(compiled)


def test_mask_grid_gives_each_prompt_its_colour():
  from clipseg_jax import visualize

  im = np.zeros((20, 20, 3), np.uint8)
  probs = np.zeros((2, 20, 20), np.float32)
  probs[:, 5:15, 5:15] = 1.0
  grid = np.asarray(visualize.mask_grid(im, probs, ["a", "b"], height=20))
  assert grid.shape == (38, 3 * 24, 3)
  shown = [grid[10, tile * 24 + 10].astype(float) / visualize.ALPHA for tile in (1, 2)]  # tile 0: the image
  assert np.abs(shown[0] - shown[1]).max() > 50  # two prompts, two colours
  for tile, color in zip((1, 2), shown):
    assert grid[1, tile * 24 + 1].tolist() == [0, 0, 0]  # outside the mask: the image
    assert np.abs(visualize.PALETTE - color).max(1).min() < 4  # a palette colour


def redmean(a, b):
  """Perceived RGB distance ("redmean"), written out from its definition."""
  r = (a[0] + b[0]) / 2
  dr, dg, db = (float(x) - float(y) for x, y in zip(a, b))
  return ((2 + r / 256) * dr * dr + 4 * dg * dg + (2 + (255 - r) / 256) * db * db) ** 0.5


def test_overlay_colour_contrasts_with_the_object_and_sits_beside_the_image():
  from clipseg_jax import visualize

  im = np.full((40, 60, 3), 128, np.uint8)
  im[10:30, 10:30] = visualize.PALETTE[0]  # an object in the palette's first colour (red)
  im[10:30, 35:55] = (20, 20, 20)
  probs = np.zeros((2, 40, 60), np.float32)
  probs[0, 10:30, 10:30] = 1.0
  probs[1, 10:30, 35:55] = 1.0
  out = np.asarray(visualize.overlay(im, probs)).astype(float)
  taken = []  # the first prompt's pick: the second prompt chooses among the rest
  for k, (y, x) in enumerate([(20, 20), (20, 45)]):
    drawn = (out[y, x] - (1 - visualize.ALPHA) * im[y, x]) / visualize.ALPHA  # the colour laid over
    distances = [redmean(c, im[y, x]) for c in visualize.PALETTE]
    chosen = int(np.argmin(np.abs(visualize.PALETTE - drawn).max(1)))
    assert chosen == max((i for i in range(len(distances)) if i not in taken), key=distances.__getitem__)
    assert k == 1 or chosen != 0  # not red on the red square
    taken.append(chosen)
  np.testing.assert_array_equal(out[0, 0], im[0, 0])  # no mask: the image as it is
  side = visualize.beside(Image.fromarray(im), visualize.overlay(im, probs))
  assert side.size == (60 + 4 + 60, 40)
  np.testing.assert_array_equal(np.asarray(side)[:, :60], im)
