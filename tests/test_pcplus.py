"""PhraseCut+ sampling, its supports, held-out filtering, folder data, the loader (prompt modes: test_prompts)."""

import collections
import json

import numpy as np
import pytest
from PIL import Image

from clipseg_jax import preprocess, prompts
from clipseg_jax.input_pipeline.heldout import make_filter
from clipseg_jax.input_pipeline.loader import make_loader
from clipseg_jax.input_pipeline.pcplus import (
  PLAIN,
  TEMPLATES,
  PairIndex,
  PCPlusOptions,
  PCPlusRawTransform,
  PCPlusTransform,
  object_aware_crop,
)
from clipseg_jax.input_pipeline.sources import FolderSource


class MemorySource:
  """A referring source in memory: n images, each with two phrases (shared across images)."""

  def __init__(self, n=40, size=(48, 64), seed=0):
    rng = np.random.RandomState(seed)
    self.records = []
    for i in range(n):
      masks = []
      for _ in range(2):
        m = np.zeros(size, bool)
        y, x = rng.randint(0, size[0] - 10), rng.randint(0, size[1] - 10)
        m[y : y + 10, x : x + 10] = True
        masks.append(m)
      self.records.append(
        {
          "image": rng.randint(0, 256, size + (3,), np.uint8),
          "image_id": str(i),
          "phrases": [f"thing {i % 7}", f"other {i}"],
          "masks": masks,
        }
      )

  def __len__(self):
    return len(self.records)

  def __getitem__(self, i):
    return self.records[i]

  def phrases(self, i):
    return self.records[i]["phrases"]


def samples(opts, n=600, seed=0):
  source = MemorySource()
  transform = PCPlusTransform(source, PairIndex(source), opts)
  rng = np.random.default_rng(seed)
  return [transform(i % 80, rng) for i in range(n)], transform


def test_negative_rate_and_mixing_weights():
  out, _ = samples(PCPlusOptions(image_size=32, q_neg=0.2, mix_max=0.5))
  empty = np.mean([s["mask"].sum() == 0 for s in out])
  assert abs(empty - 0.2) < 0.05  # every source mask is non-empty and survives the crop
  w = np.array([s["text_weight"] for s in out])
  with_support = np.array([s["support"].any() for s in out])
  # "thing k" phrases occur on several images, "other i" on one: the latter get no support (w = 1).
  assert 0.2 < with_support.mean() < 0.8
  assert np.all(w[~with_support] == 1.0)
  assert w[with_support].min() >= 0 and w[with_support].max() <= 0.5
  assert abs(w[with_support].mean() - 0.25) < 0.04
  texts = {s["text"] for s in out}
  assert any(t.startswith("a photo of") for t in texts) and any(t.startswith("thing") for t in texts)


def test_text_only_and_no_augmentation():
  out, _ = samples(
    PCPlusOptions(image_size=32, visual_prompts=False, augment=False, q_neg=0.0, templates=("{}",)), n=80
  )
  assert all(s["text_weight"] == 1.0 and not s["support"].any() for s in out)
  assert all(s["mask"].sum() > 0 for s in out)  # no negatives with q_neg = 0
  assert {s["text"] for s in out} <= {p for r in MemorySource().records for p in r["phrases"]}
  assert out[0]["pixels"].shape == (32, 32, 3) and out[0]["mask"].shape == (32, 32)


def find_crop(seg, image_size, randint, iterations=50, min_frac=0.05):
  """timojl/clipseg `datasets/phrasecut.py` `find_crop` (best_of=None) with its `random_crop_slices`,
  `randint(high)` standing for `torch.randint(0, high, (1,)).item()`: -> (top, left)."""
  seg = seg.astype(bool)
  best = float("-inf"), None, None
  min_sum = seg.shape[0] * seg.shape[1] * min_frac
  for _ in range(iterations):
    y = randint(seg.shape[0] - image_size[0] + 1)
    x = randint(seg.shape[1] - image_size[1] + 1)
    kept = seg[y : y + image_size[0], x : x + image_size[1]].sum()
    if kept > min_sum:
      return y, x
    if kept > best[0]:
      best = kept, y, x
  return best[1:]


class TorchRng:
  """A numpy-Generator face on torch's global generator (`integers` as `torch.randint`)."""

  def __init__(self, torch):
    self.torch = torch

  def integers(self, low, high):
    return self.torch.randint(low, high, (1,)).item()


def crop_cases():
  """Masks where the original's rule (> 5% of the image's area) and one on the mask's own size part:
  small objects near an edge of wide and tall images, objects no square holds enough of, empty masks,
  square images (one possible crop)."""
  rng = np.random.default_rng(0)
  cases = []
  for h, w in [(60, 200), (200, 60), (375, 500), (500, 333), (40, 40), (31, 32)]:
    for size in (3, 8, 25, 80):
      mask = np.zeros((h, w), bool)
      y, x = rng.integers(0, max(1, h - size)), rng.integers(0, max(1, w - size))
      mask[y : y + size, x : x + size] = True
      cases.append(mask)
    cases.append(np.zeros((h, w), bool))
    cases.append(rng.random((h, w)) < 0.02)
  return cases


def test_crop_is_the_originals_find_crop(torch):
  """Fed torch's random stream, the crop is the original `find_crop`'s and consumes the same draws."""
  for i, mask in enumerate(crop_cases()):
    side = min(mask.shape)
    torch.manual_seed(i)
    want = find_crop(mask, (side, side), lambda high: torch.randint(0, high, (1,)).item())
    after_theirs = torch.randint(0, 2**30, (1,)).item()
    torch.manual_seed(i)
    top, left, got_side = object_aware_crop(mask, TorchRng(torch), tries=50, min_fraction=0.05)
    assert (top, left) == tuple(want) and got_side == side, (i, mask.shape)
    assert torch.randint(0, 2**30, (1,)).item() == after_theirs, i


def test_crop_keeps_the_object_as_the_original():
  """Measured on wide images with mid-sized objects near an edge: the original's rule (5% of the
  image's area) keeps at least half the object in nearly every crop."""
  rng = np.random.default_rng(1)
  lost = []
  for _ in range(300):
    h, w = 300, 500
    oh, ow = rng.integers(40, 120, 2)
    y, x = rng.integers(0, h - oh), rng.choice([rng.integers(0, 60), rng.integers(w - ow - 60, w - ow)])
    mask = np.zeros((h, w), bool)
    mask[y : y + oh, x : x + ow] = True
    top, left, side = object_aware_crop(mask, rng, 50, 0.05)
    lost.append(mask[top : top + side, left : left + side].sum() < 0.5 * mask.sum())
  assert np.mean(lost) < 0.02


@pytest.mark.parametrize("raw", [False, True])
def test_negatives_are_cropped_on_the_true_mask(raw):
  """As the original's `__getitem__`: the query is cropped on its own mask (`load_sample`) first, then
  the negative empties the crop's mask; both paths (host, device_augment) take the same crop."""
  source = MemorySource(n=12, size=(40, 120))
  opts = PCPlusOptions(image_size=16, q_neg=1.0, max_crop_side=64)
  transform = (PCPlusRawTransform if raw else PCPlusTransform)(source, PairIndex(source), opts)
  for pair in range(24):
    record = source[pair // 2]
    image, mask = record["image"], record["masks"][pair % 2]
    theirs = np.random.default_rng(pair)
    top, left = find_crop(mask, (40, 40), lambda high, g=theirs: int(g.integers(0, high)))
    choice, (crop, crop_mask), _ = transform.draw(pair, np.random.default_rng(pair))
    assert choice.negative and choice.phrase != record["phrases"][pair % 2]
    np.testing.assert_array_equal(crop, image[top : top + 40, left : left + 40])
    assert crop_mask.shape == (40, 40) and not crop_mask.any()
    sample = transform(pair, np.random.default_rng(pair))
    assert not sample["mask"].any()
    if raw:
      np.testing.assert_array_equal(sample["pixels"], image[top : top + 40, left : left + 40])


def test_templates_only_when_mixing_visual_prompts():
  """The original's `shuffle+` list (no bare "{}") is sampled only with `mix` on; text-only training
  uses the raw phrase. Explicit templates are kept."""
  assert len(TEMPLATES) == 9 and "{}" not in TEMPLATES and TEMPLATES[0] == "a photo of a {}."
  assert PCPlusOptions().templates == TEMPLATES
  assert PCPlusOptions(visual_prompts=False).templates == PLAIN == ("{}",)
  assert PCPlusOptions(visual_prompts=False, templates=("a {}",)).templates == ("a {}",)
  assert PCPlusOptions.from_config({"visual_prompts": False, "templates": None}).templates == PLAIN
  assert PCPlusOptions.from_config({"templates": ["x {}", "{} y"]}).templates == ("x {}", "{} y")
  out, _ = samples(PCPlusOptions(image_size=16, visual_prompts=False, q_neg=0.0), n=40)
  assert {s["text"] for s in out} <= {p for r in MemorySource().records for p in r["phrases"]}


def test_options_reject_unknown_keys():
  with pytest.raises(ValueError, match="unknown PhraseCut\\+ option.*q_negative"):
    PCPlusOptions.from_config({"q_negative": 0.1})


def torch_resize(torch, image, size, mode):
  """The original's `load_sample` resizes: F.interpolate on float NCHW (bilinear: align_corners=True)."""
  x = torch.from_numpy(np.asarray(image, np.float32))
  x = x.permute(2, 0, 1)[None] if x.ndim == 3 else x[None, None]
  kw = {"align_corners": True} if mode == "bilinear" else {}
  out = torch.nn.functional.interpolate(x, (size, size), mode=mode, **kw)[0]
  return (out.permute(1, 2, 0) if image.ndim == 3 else out[0]).numpy()


@pytest.mark.parametrize(
  "shape,size", [((48, 64), 32), ((17, 17), 40), ((40, 23), 64), ((1, 5), 7), ((5, 1), 3), ((9, 9), 1), ((1, 1), 4)]
)
def test_resize_aligned_is_torch_align_corners(torch, shape, size):
  """Down- and upscales, non-square, size-1 edges: torch's bilinear with align_corners=True, 0..255 float."""
  image = np.random.default_rng(size).integers(0, 256, shape + (3,), np.uint8)
  out = preprocess.resize_aligned(image, size)
  assert out.dtype == np.float32 and out.shape == (size, size, 3)
  np.testing.assert_allclose(out, torch_resize(torch, image, size, "bilinear"), atol=1e-4, rtol=0)


def test_resize_aligned_keeps_an_image_at_its_size():
  image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)
  np.testing.assert_array_equal(preprocess.resize_aligned(image, 32), image)


def test_query_and_mask_are_resized_as_the_original(torch):
  """Without augmentation the crop is the whole 48 x 64 image: pixels are its torch bilinear resize
  (align_corners=True, unrounded float32), the mask its torch nearest resize."""
  source = MemorySource(n=8)
  transform = PCPlusTransform(source, PairIndex(source), PCPlusOptions(image_size=32, augment=False, q_neg=0.0))
  for i in range(4):
    sample = transform(i, np.random.default_rng(i))
    image, mask = transform._pair(i)
    assert sample["pixels"].dtype == np.float32
    np.testing.assert_allclose(sample["pixels"], torch_resize(torch, image, 32, "bilinear"), atol=1e-4, rtol=0)
    np.testing.assert_array_equal(sample["mask"], torch_resize(torch, mask, 32, "nearest"))


def test_support_is_normalised_prompt_of_the_resized_pair(torch):
  """Supports come out of prompt engineering normalised (float32), made from the support pair resized
  to the image size first as the original (torch's align_corners=True bilinear, unrounded; nearest
  mask); zeros (the mean colour) without a support."""
  source = MemorySource()
  transform = PCPlusTransform(source, PairIndex(source), PCPlusOptions(image_size=32, augment=False, q_neg=0.0))
  recipe, _ = prompts.parse_mode("crop_blur_highlight", 32)
  seen = set()
  for i in range(40):
    rng = np.random.default_rng(i)
    sample = transform(i, rng)
    choice = transform.sampler.choose(i, np.random.default_rng(i))  # the same draws (no crop draws)
    assert sample["support"].dtype == np.float32 and sample["support"].shape == (32, 32, 3)
    if choice.support is None:
      assert not sample["support"].any()
    else:
      image, mask = transform._pair(choice.support)
      resized = torch_resize(torch, image, 32, "bilinear")
      want = prompts.crop_prompt(resized, torch_resize(torch, mask, 32, "nearest") > 0, recipe, 32)
      np.testing.assert_allclose(sample["support"], want, atol=2e-5, rtol=0)
    seen.add(choice.support is None)
  assert seen == {True, False}


def test_heldout_filter():
  keep = make_filter(["cat", "tvmonitor"])
  assert not keep("a black cat on the sofa") and not keep("Kitten") and not keep("the television")
  assert keep("category of things") and keep("a dog") and keep("scatter plot")
  with pytest.raises(ValueError, match="unknown PASCAL class"):
    make_filter(["unicorn"])
  source = MemorySource()
  index = PairIndex(source, keep=lambda p: not p.startswith("thing 3"))
  assert index.dropped == sum(r["phrases"][0] == "thing 3" for r in source.records)


def write_folder(root, fmt):
  rows = []
  for i in range(4):
    Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(root / f"img{i}.jpg")
    m = np.zeros((20, 30), np.uint8)
    m[5:10, 5 : 5 + i + 1] = 255
    Image.fromarray(m).save(root / f"mask{i}.png")
    rows.append(
      {"image": f"img{i}.jpg", "mask": f"mask{i}.png", "phrase": f"bar {i}", "split": "train" if i < 3 else "test"}
    )
  if fmt == "json":
    (root / "annotations.json").write_text(json.dumps(rows))
  else:
    (root / "annotations.csv").write_text(
      "image,mask,phrase,split\n" + "".join(f"{r['image']},{r['mask']},{r['phrase']},{r['split']}\n" for r in rows)
    )


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_folder_source(tmp_path, fmt):
  write_folder(tmp_path, fmt)
  train = FolderSource(tmp_path, "train")
  assert len(train) == 3 and len(FolderSource(tmp_path, "test")) == 1
  r = train[2]
  assert r["phrases"] == ["bar 2"] and r["masks"][0].sum() == 15 and r["image"].shape == (20, 30, 3)


def test_folder_source_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="annotations.json or annotations.csv"):
    FolderSource(tmp_path)
  (tmp_path / "annotations.json").write_text(json.dumps([{"image": "x.jpg", "mask": "m.png", "phrase": "a"}]))
  with pytest.raises(FileNotFoundError, match="row 0: image file"):
    FolderSource(tmp_path)
  (tmp_path / "annotations.json").write_text(json.dumps([{"image": "x.jpg", "phrase": "a"}]))
  with pytest.raises(ValueError, match="row 0 needs non-empty image, mask and phrase"):
    FolderSource(tmp_path)


def batches(loader, n, state=None):
  it = iter(loader)
  if state is not None:
    it.set_state(state)
  return [next(it) for _ in range(n)], it


def assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)


@pytest.mark.slow  # iterates the grain loader twice
def test_loader_resume_is_exact():
  source = MemorySource()
  loader = make_loader(source, PCPlusOptions(image_size=32), batch_size=8, seed=3)
  straight, _ = batches(loader, 25)  # crosses epoch boundaries (80 pairs = 10 batches)
  first, it = batches(loader, 12)
  state = it.get_state()
  resumed, _ = batches(loader, 13, state)
  assert_same(first + resumed, straight)
  b = straight[0]
  assert b["pixels"].shape == (8, 32, 32, 3) and b["input_ids"].shape == (8, 77)
  assert b["input_ids"].dtype == np.int32 and b["text_weight"].shape == (8,)
  assert b["pixels"].dtype == b["support"].dtype == b["mask"].dtype == np.float32  # pixels 0..255, unrounded
  other, _ = batches(make_loader(source, PCPlusOptions(image_size=32), batch_size=8, seed=4), 1)
  assert not np.array_equal(other[0]["pixels"], b["pixels"])  # the seed matters


def test_loader_shards_are_disjoint():
  source = MemorySource(n=20)  # 40 pairs
  opts = PCPlusOptions(image_size=16, augment=False, visual_prompts=False, q_neg=0.0, templates=("{}",))
  seen = []
  for shard in range(2):
    loader = make_loader(source, opts, batch_size=4, seed=0, num_epochs=1, shard_index=shard, shard_count=2)
    keys = [[(x.tobytes(), ids.tobytes()) for x, ids in zip(b["pixels"], b["input_ids"])] for b in loader]
    seen.append({k for batch in keys for k in batch})
    assert len(keys) == 5
  assert len(seen[0] | seen[1]) == 40 and not seen[0] & seen[1]


@pytest.mark.slow  # spawns grain worker processes (35 s)
def test_loader_workers_match_in_process():
  source = MemorySource(n=12)
  opts = PCPlusOptions(image_size=16)
  local, _ = batches(make_loader(source, opts, batch_size=4, seed=1), 4)
  loader = make_loader(source, opts, batch_size=4, seed=1, worker_count=2)
  first, it = batches(loader, 2)
  state = it.get_state()
  rest, _ = batches(loader, 2, state)
  assert_same(first + rest, local)


class PhraseSource:
  """Pairs with the given phrases, one per record (no pixels: the sampler reads phrases only)."""

  def __init__(self, phrases):
    self._phrases = [[p] for p in phrases]

  def __len__(self):
    return len(self._phrases)

  def phrases(self, i):
    return self._phrases[i]


def test_sampler_draws_negatives_and_supports_as_the_original():
  """timojl/clipseg `PhraseCut.__getitem__`: a negative's phrase is uniform over the distinct phrases
  and redrawn until it differs (so every negative draw is a negative); the support is uniform over
  all samples with the phrase, the query's own included, and there is none for a single-sample phrase."""
  from clipseg_jax.input_pipeline.pcplus import PCPlusSampler

  phrases = ["common"] * 90 + ["rare a", "rare b", "rare c", "pair", "pair"]
  sampler = PCPlusSampler(PairIndex(PhraseSource(phrases)), PCPlusOptions(q_neg=0.2))
  rng, n = np.random.default_rng(0), 20000
  draws = [sampler.choose(0, rng) for _ in range(n)]  # the query says "common"
  negatives = [d.phrase for d in draws if d.negative]
  assert abs(len(negatives) / n - 0.2) < 4 * np.sqrt(0.2 * 0.8 / n)  # frequency-weighted: ~0.2 * 5/95
  counts = collections.Counter(negatives)
  assert set(counts) == {"rare a", "rare b", "rare c", "pair"}
  assert all(abs(c / len(negatives) - 0.25) < 0.04 for c in counts.values())  # uniform, not by frequency
  rare = [d for d in draws if d.phrase.startswith("rare")]
  assert rare and all(d.support is None and d.text_weight == 1.0 for d in rare)  # one sample: no support
  pair = [d.support for d in draws if d.phrase == "pair"]
  assert set(pair) == {93, 94}
  own = [sampler.choose(93, rng) for _ in range(4000)]
  kept = [d.support for d in own if not d.negative]
  assert abs(kept.count(93) / len(kept) - 0.5) < 0.05  # the query's own sample half the time
  common = [d.support for d in draws if not d.negative]
  assert 0 in common and set(common) <= set(range(90))


def test_cached_features_resize_as_the_original(tiny_model, torch):
  """The cached-feature path's inputs are the streaming path's without augmentation (the original's
  `load_sample` with aug_crop=False): the query by torch's align_corners=True bilinear (unrounded), the
  mask by torch's nearest, supports engineered on the resized float pair."""
  import jax
  import jax.numpy as jnp

  from clipseg_jax.models.clipseg import ClipSegModel
  from clipseg_jax.train.features import FeatureCache

  source, size = MemorySource(n=3, size=(40, 70)), 48
  opts = PCPlusOptions(image_size=size, augment=False)
  index = PairIndex(source)
  cache = FeatureCache(tiny_model.module, tiny_model.params, tiny_model.tokenizer, source, index, opts, show=False)
  apply = lambda method: jax.jit(lambda x: tiny_model.module.apply({"params": tiny_model.params}, x, method=method))
  activations, visual_embeddings = apply(ClipSegModel.activations), apply(ClipSegModel.visual_embeddings)
  recipe, _ = prompts.parse_mode(opts.prompt_mode, size)
  for r, record in enumerate(source.records):
    query = torch_resize(torch, record["image"], size, "bilinear")
    want = activations(preprocess.normalize(jnp.asarray(query[None])))
    for table, a in zip(cache.activations, want):
      np.testing.assert_allclose(table[r], np.asarray(a)[0], atol=2e-5, rtol=0)
    for k in range(2):
      p = index.pairs.index((r, k))
      mask = torch_resize(torch, record["masks"][k], size, "nearest") > 0
      np.testing.assert_array_equal(cache.masks[p], mask)
      support = prompts.crop_prompt(query, mask, recipe, size)
      visual = visual_embeddings(jnp.asarray(support[None]))
      np.testing.assert_allclose(cache.visual[p], np.asarray(visual)[0], atol=2e-5, rtol=0)
