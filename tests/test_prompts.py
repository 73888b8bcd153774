"""Visual prompt engineering against an independent re-derivation of the original CLIPSeg's recipes
(`blend_image_segmentation` / `img_preprocess`): ImageNet-normalised float32, OpenCV's Gaussian blur
(15 x 15, reflect-101 borders), crop box with int() truncation, zero padding, torch's nearest resize."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipseg_jax import preprocess, prompts

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
TOL = 1e-4  # normalised units


# ----- the reference: written from the recipes, sharing no code with clipseg_jax.prompts -----


def ref_normalize(rgb):
  return (rgb.astype(np.float64) / 255.0 - MEAN) / STD


def ref_kernel(sigma, ksize=15):
  g = [math.exp(-((i - (ksize - 1) / 2) ** 2) / (2 * sigma**2)) for i in range(ksize)]
  return np.array(g) / sum(g)


def reflect101(p, n):
  """OpenCV's BORDER_REFLECT_101 index: gfedcb|abcdefgh|gfedcba."""
  if n == 1:
    return 0
  while p < 0 or p >= n:
    p = -p if p < 0 else 2 * n - 2 - p
  return p


_BLURRED = {}


def ref_blur(x, sigma, ksize=15):
  """Direct 2-D convolution with the outer-product kernel, borders by explicit index reflection
  (memoised: the modes of one case blur the same image)."""
  key = (x.shape, x.tobytes(), sigma, ksize)
  if key not in _BLURRED:
    k2 = np.outer(ref_kernel(sigma, ksize), ref_kernel(sigma, ksize))
    h, w = x.shape[:2]
    r = ksize // 2
    out = np.zeros(x.shape, np.float64)
    for dy in range(-r, r + 1):
      shifted = x[[reflect101(i + dy, h) for i in range(h)]]
      for dx in range(-r, r + 1):
        out += k2[dy + r, dx + r] * shifted[:, [reflect101(j + dx, w) for j in range(w)]]
    if len(_BLURRED) >= 4:
      _BLURRED.clear()
    _BLURRED[key] = out
  return _BLURRED[key]


def ref_box(mask, context=0.1):
  """Bounding box (top, left, bottom, right), each side out by int(context * extent) as the original:
  Python floats, int() truncation, clipped to the image."""
  h, w = mask.shape
  rows = [i for i in range(h) if mask[i].any()]
  cols = [j for j in range(w) if mask[:, j].any()]
  if not rows:
    return 0, 0, h, w
  top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
  ey, ex = bottom - top, right - left
  return (
    int(max(0, top - context * ey)),
    int(max(0, left - context * ex)),
    int(min(h, bottom + context * ey)),
    int(min(w, right + context * ex)),
  )


def ref_crop_pad_resize(x, mask, size, context=0.1):
  top, left, bottom, right = ref_box(mask, context)
  crop = torch.from_numpy(np.ascontiguousarray(x[top:bottom, left:right].transpose(2, 0, 1)))
  h, w = crop.shape[1:]
  dh, dw = max(h, w) - h, max(h, w) - w
  padded = F.pad(crop, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2), value=0.0)
  return F.interpolate(padded[None].float(), (size, size))[0].numpy().transpose(1, 2, 0)


def ref_preprocess(x, seg, blur, bg_fac):
  bl = ref_blur(x, blur) if blur > 0 else x
  return x * seg + bg_fac * bl * (1 - seg)


def ref_prompt(image, mask, mode, size):
  """The original's recipe for `mode`, from its definition."""
  if mode.startswith("crop"):
    x, seg = ref_normalize(image), mask.astype(np.float64)[..., None]
    blur, bg_fac = (1, 1.0) if mode == "crop" else (3, 0.1)
    return ref_crop_pad_resize(ref_preprocess(x, seg, blur, bg_fac), mask, 352 if mode.endswith("352") else size)
  image = preprocess.resize_square(image, size)  # non-cropping modes blend at the model's size
  mask = preprocess.resize_square(mask, size, nearest=True)
  x, seg = ref_normalize(image), mask.astype(np.float64)[..., None]
  recipes = {
    "plain": lambda: x,
    "image_only": lambda: x,
    "image_black": lambda: 0 * x,
    "overlay": lambda: x * seg,
    "highlight": lambda: 0.85 * x * seg + 0.15 * x,
    "highlight2": lambda: (x / 2 + 0.1) * seg + 0.3 * x / 2,
    "shape": lambda: np.repeat(seg, 3, axis=-1),
    "blur_highlight": lambda: ref_preprocess(x, seg, 1, 0.5) - 0.01,
    "blur3_highlight": lambda: ref_preprocess(x, seg, 3, 0.5) - 0.01,
    "blur3_highlight01": lambda: ref_preprocess(x, seg, 3, 0.1) - 0.01,
  }
  return recipes[mode]()


# ----- tests -----


def random_case(h, w, seed, kind):
  rng = np.random.RandomState(seed)
  image = rng.randint(0, 256, (h, w, 3)).astype(np.uint8)
  mask = np.zeros((h, w), bool)
  if kind == "box":
    t, l = rng.randint(0, h // 2), rng.randint(0, w // 2)
    mask[t : t + rng.randint(3, h // 2), l : l + rng.randint(3, w // 2)] = True
  elif kind == "corner":  # the blur window meets the image's border
    mask[h - 9 :, : w // 3] = True
  elif kind == "noise":
    mask = rng.rand(h, w) > 0.8
  return image, mask


CASES = [
  (352, 352, 0, "box"),
  (352, 352, 1, "corner"),
  (352, 352, 2, "noise"),
  (352, 352, 3, "empty"),
  (90, 150, 4, "box"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}x{c[1]}-{c[3]}")
def test_every_mode_matches_the_reference(case):
  h, w, seed, kind = case
  image, mask = random_case(h, w, seed, kind)
  for mode in prompts.MODES:
    size = 352 if h == w else 96
    out = prompts.visual_prompt(image, mask, mode, size=size)
    want = ref_prompt(image, mask, mode, size)
    assert out.dtype == np.float32 and out.shape == want.shape == (want.shape[0],) * 2 + (3,), mode
    assert np.abs(out - want).max() < TOL, (mode, np.abs(out - want).max())


def test_gaussian_kernel_is_opencvs():
  for sigma in (1, 3):
    k = prompts.gaussian_kernel(sigma)
    np.testing.assert_allclose(k, ref_kernel(sigma), rtol=1e-12, atol=1e-15)
    assert k.shape == (15,) and abs(k.sum() - 1) < 1e-12
  # sigma 1: e^{-d^2/2} normalised; the centre weight is 1 / sum_{d=-7..7} e^{-d^2/2}
  assert abs(prompts.gaussian_kernel(1)[7] - 1 / sum(math.exp(-(d * d) / 2) for d in range(-7, 8))) < 1e-12


@pytest.mark.parametrize("shape", [(40, 57, 3), (6, 11, 3), (1, 20, 3)])
def test_blur_reflects_without_repeating_the_edge(shape):
  x = np.random.RandomState(0).randn(*shape).astype(np.float32)
  for sigma in (1, 3):
    np.testing.assert_allclose(prompts.gaussian_blur(x, sigma), ref_blur(x, sigma), atol=1e-6)
  assert [reflect101(p, 5) for p in (-3, -1, 5, 7)] == [3, 1, 3, 1]


def test_crop_box_by_hand():
  mask = np.zeros((100, 100), bool)
  mask[10:30, 40:80] = True  # extents 20 rows, 40 cols -> int(2.0) and int(4.0) context
  assert prompts.mask_box(mask) == ref_box(mask) == (8, 36, 32, 84)
  mask = np.zeros((100, 100), bool)
  mask[40:65, 0:95] = True  # 0.1 * 25 = 2.5, truncated: top int(37.5) = 37, bottom int(67.5) = 67
  assert prompts.mask_box(mask) == (37, 0, 67, 100)  # clipped at the image
  assert prompts.mask_box(np.zeros((7, 9), bool)) == (0, 0, 7, 9)  # empty mask: the whole image
  mask = np.zeros((60, 200), bool)
  mask[20:40, 150:190] = True  # non-square: each axis clipped to its own size
  assert prompts.mask_box(mask) == (18, 146, 42, 194)


def test_nearest_resize_is_torchs():
  for n_in, n_out in [(48, 352), (500, 352), (352, 224), (37, 352), (30, 60), (352, 352), (1001, 7)]:
    x = torch.arange(n_in, dtype=torch.float32)[None, None, :, None].expand(1, 1, n_in, 2).contiguous()
    want = F.interpolate(x, (n_out, 2))[0, 0, :, 0].long().numpy()
    np.testing.assert_array_equal(prompts.nearest_indices(n_in, n_out), want)


def test_darkened_background_tends_to_the_mean_colour():
  """Blending happens in normalised units: the background is pulled to 0, the ImageNet mean colour."""
  colour = np.array([250, 20, 120], np.uint8)
  image = np.tile(colour, (64, 64, 1))
  mask = np.zeros((64, 64), bool)
  mask[20:40, 20:40] = True
  pixel = colour / 255.0
  for mode, fac, offset in [("blur3_highlight01", 0.1, 0.01), ("blur_highlight", 0.5, 0.01)]:
    out = prompts.visual_prompt(image, mask, mode, size=64)
    back = out[0, 0] * STD + MEAN  # pixel space (0..1)
    np.testing.assert_allclose(back, MEAN + fac * (pixel - MEAN) - offset * STD, atol=1e-5)
    np.testing.assert_allclose(out[30, 30], (pixel - MEAN) / STD - offset, atol=1e-5)  # the object kept
  out = prompts.crop_blur_highlight(image, mask, size=64)
  np.testing.assert_allclose(out[0, 0] * STD + MEAN, MEAN + 0.1 * (pixel - MEAN), atol=1e-5)


def test_crop_padding_is_zero_in_normalised_units():
  image = np.full((60, 80, 3), 255, np.uint8)
  mask = np.zeros((60, 80), bool)
  mask[20:30, 12:62] = True  # box rows 19:31, cols 7:67 with context: 24 rows of padding above and below
  out = prompts.visual_prompt(image, mask, "crop", size=60)
  assert out.shape == (60, 60, 3)
  assert not out[:24].any() and not out[36:].any()  # 0: the mean grey, not black
  np.testing.assert_allclose(out[24:36], np.broadcast_to((1 - MEAN) / STD, (12, 60, 3)), atol=1e-5)


def test_mode_names_and_sizes():
  image, mask = random_case(50, 70, 0, "box")
  assert prompts.visual_prompt(image, mask, "crop_blur_highlight").shape == (352, 352, 3)  # default
  assert prompts.visual_prompt(image, mask, "crop_blur_highlight224", size=64).shape == (224, 224, 3)
  assert prompts.visual_prompt(image, mask, "crop_blur_highlight352", size=64).shape == (352, 352, 3)
  assert prompts.visual_prompt(image, mask, "blur3_highlight01", size=40).shape == (40, 40, 3)
  assert prompts.visual_prompt(image, mask, "highlight48").shape == (48, 48, 3)
  np.testing.assert_array_equal(
    prompts.crop_blur_highlight(image, mask, 64), prompts.visual_prompt(image, mask, "crop_blur_highlight64")
  )
  with pytest.raises(ValueError, match="unknown visual prompt mode 'separate'"):
    prompts.visual_prompt(image, mask, "separate")
  with pytest.raises(ValueError, match="support mask is 10x10 but its image is 70x50"):
    prompts.visual_prompt(image, np.zeros((10, 10), bool), "crop")
