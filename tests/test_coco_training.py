"""COCO-20i training (timojl/clipseg experiments/coco.yaml): our episodes against a re-implementation of the
original's train path (hsnet's data/coco.py `DatasetCOCO` train split, datasets/coco_wrapper.py `COCOWrapper`
with `mask: text_and_crop_blur_highlight352`, training.py's `mix`), on a tiny fixture in hsnet's layout."""

import numpy as np
import pytest
from conftest import training_overrides
from PIL import Image
from test_one_shot import original_blend_crop_blur_highlight352, write_noise_jpeg

from clipseg_jax.input_pipeline import build

FOLD = 0
TRAIN_VALUES = [c + 1 for c in range(80) if c % 4 != FOLD]  # fold 0 trains on classes 4k + 1, 4k + 2, 4k + 3
# name: (h, w, label values as vertical stripes); every training class is in two or three images; value 1
# (fold 0's test class "person") and 255 are there too and must never be a target.
TRAIN_NAMES = [f"COCO_train2014_{i:012d}" for i in (9, 25, 30, 34)]
SPECS = {
  TRAIN_NAMES[0]: (90, 200, TRAIN_VALUES[:40]),
  TRAIN_NAMES[1]: (150, 240, TRAIN_VALUES[20:]),
  TRAIN_NAMES[2]: (120, 200, TRAIN_VALUES[:20] + TRAIN_VALUES[40:] + [1]),
  TRAIN_NAMES[3]: (100, 180, TRAIN_VALUES[::3] + [1]),
}


def write_hsnet_coco_train(root):
  """hsnet's layout, train split: COCO2014/{train2014/NAME.jpg, annotations/train2014/NAME.png}."""
  base = root / "COCO2014"
  for k, (name, (h, w, values)) in enumerate(SPECS.items()):
    write_noise_jpeg(base / "train2014" / f"{name}.jpg", h, w, 30 + k)
    seg = np.zeros((h, w), np.uint8)
    for j, v in enumerate(values):
      x0 = (j * w) // len(values)
      seg[5 + 4 * k + j % 7 : h - 6, x0 : x0 + max(2, w // len(values) - 1)] = v
    seg[-4:, -15:] = 255
    (base / "annotations" / "train2014").mkdir(parents=True, exist_ok=True)
    Image.fromarray(seg, "L").save(base / "annotations" / "train2014" / f"{name}.png")
  return base


@pytest.fixture(scope="module")
def coco_train(tmp_path_factory):
  root = tmp_path_factory.mktemp("hsnet_train")
  base = write_hsnet_coco_train(root)
  data_dir = root / "tfds"
  build("coco", data_dir=data_dir, manual_dir=root)
  return base, data_dir


class OriginalCocoTrain:
  """COCOWrapper('train', fold, image_size=S, mask='text_and_crop_blur_highlight352', negative_prob=p) over
  hsnet's DatasetCOCO(split='train'), and training.py's per-sample condition (`sample_prompts` with
  shuffle+, text weight ~ Uniform(mix_text_min=0, 1)). hsnet's class lists (its trn pickles) are the images
  holding the class. `rng` (a numpy Generator) stands in for numpy's global state (hsnet) and torch's
  (COCOWrapper's `torch.rand` / `torch.randint`, `sample_prompts`, the weights), in the order one sample
  uses them."""

  def __init__(self, base, fold, negative_prob, torch, size=352):
    self.base, self.torch, self.size, self.negative_prob = base, torch, size, negative_prob
    self.names = sorted(f"train2014/{n}.jpg" for n in SPECS)
    self.masks = {n: np.asarray(Image.open(base / "annotations" / n.replace(".jpg", ".png"))) for n in self.names}
    # hsnet build_class_ids (trn): the classes not in fold + 4v
    class_ids_val = [fold + 4 * v for v in range(20)]
    self.class_ids = [x for x in range(80) if x not in class_ids_val]
    self.classwise = {c: [n for n in self.names if (self.masks[n] == c + 1).any()] for c in self.class_ids}
    self.img_metadata = sorted({n for v in self.classwise.values() for n in v})

  def __len__(self):
    return len(self.img_metadata)

  def transform(self, name):  # Resize((S, S)) on PIL, ToTensor, Normalize
    torch, size = self.torch, self.size
    mean, std = np.float32([0.485, 0.456, 0.406]), np.float32([0.229, 0.224, 0.225])
    pil = Image.open(self.base / name).convert("RGB").resize((size, size), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(pil, np.float32) / 255).permute(2, 0, 1)
    return (x - torch.from_numpy(mean)[:, None, None]) / torch.from_numpy(std)[:, None, None]

  def read_mask(self, name, c):
    import torch.nn.functional as F

    m = self.torch.tensor(self.masks[name].astype(np.int64))
    m[m != c + 1] = 0
    m[m == c + 1] = 1
    return F.interpolate(m[None, None].float(), (self.size, self.size), mode="nearest")[0, 0]

  def load_frame(self, rng):  # hsnet DatasetCOCO.load_frame + __getitem__, shot 1
    class_sample = rng.choice(self.class_ids, 1, replace=False)[0]
    query_name = rng.choice(self.classwise[class_sample], 1, replace=False)[0]
    while True:
      support_name = rng.choice(self.classwise[class_sample], 1, replace=False)[0]
      if query_name != support_name:
        break
    return {
      "query_img": self.transform(query_name),
      "query_mask": self.read_mask(query_name, class_sample),
      "support_img": self.transform(support_name),
      "support_mask": self.read_mask(support_name, class_sample),
      "class_id": int(class_sample),
      "names": (query_name, support_name),
    }

  def __getitem__(self, rng):  # COCOWrapper.__getitem__, then training.py's mix for this sample
    sample = self.load_frame(rng)
    img_s, seg_s = sample["support_img"], sample["support_mask"]
    negative = False
    if self.negative_prob > 0 and rng.random() < self.negative_prob:
      new_class_id = sample["class_id"]
      while new_class_id == sample["class_id"]:
        rng.integers(0, len(self))  # torch.randint(0, len(self)): the index hsnet ignores
        sample2 = self.load_frame(rng)
        new_class_id = sample2["class_id"]
      img_s, seg_s, negative = sample2["support_img"], self.torch.zeros_like(seg_s), True
    label_name = ORIGINAL_COCO_CLASSES[sample["class_id"]]
    visual = original_blend_crop_blur_highlight352(img_s, seg_s, self.torch)
    template = SHUFFLE_PLUS[int(rng.integers(len(SHUFFLE_PLUS)))]
    weight = rng.uniform(0.0, 1.0)
    return {
      "query": sample["query_img"].permute(1, 2, 0).numpy(),
      "mask": sample["query_mask"].numpy(),
      "text": template.format(label_name),
      "support": visual.permute(1, 2, 0).numpy(),
      "text_weight": weight,
      "class_id": sample["class_id"],
      "negative": negative,
    }


# models/clipseg.py get_prompt_list('shuffle+'); coco_wrapper.py COCO_CLASSES (as the original writes them)
SHUFFLE_PLUS = [
  "a photo of a {}.",
  "a photograph of a {}.",
  "an image of a {}.",
  "{}.",
  "a cropped photo of a {}.",
  "a good photo of a {}.",
  "a photo of one {}.",
  "a bad photo of a {}.",
  "a photo of the {}.",
]
ORIGINAL_COCO_CLASSES = (
  "person,bicycle,car,motorcycle,airplane,bus,train,truck,boat,traffic light,fire hydrant,stop sign,parking meter,"
  "bench,bird,cat,dog,horse,sheep,cow,elephant,bear,zebra,giraffe,backpack,umbrella,handbag,tie,suitcase,frisbee,"
  "skis,snowboard,sports ball,kite,baseball bat,baseball glove,skateboard,surfboard,tennis racket,bottle,"
  "wine glass,cup,fork,knife,spoon,bowl,banana,apple,sandwich,orange,broccoli,carrot,hot dog,pizza,donut,cake,"
  "chair,couch,potted plant,bed,dining table,toilet,tv,laptop,mouse,remote,keyboard,cell phone,microwave,oven,"
  "toaster,sink,refrigerator,book,clock,vase,scissors,teddy bear,hair drier,toothbrush"
).split(",")


def ours(data_dir, negative_prob, size=352):
  from clipseg_jax.input_pipeline.episodes import Coco20iTransform, EpisodeOptions, SemanticSource
  from clipseg_jax.input_pipeline.pcplus import PCPlusOptions
  from clipseg_jax.train.recipes import load_config

  p = load_config(f"coco20i:{FOLD}").data.pcplus  # the recipe's sampling options
  opts = PCPlusOptions.from_config({**p.to_dict(), "image_size": size})
  source = SemanticSource("coco", "train", data_dir)
  return Coco20iTransform(source, EpisodeOptions(fold=FOLD, negative_prob=negative_prob), opts)


def test_episodes_match_the_original(coco_train, torch):
  from clipseg_jax import preprocess

  base, data_dir = coco_train
  transform = ours(data_dir, negative_prob=0.4)
  original = OriginalCocoTrain(base, FOLD, 0.4, torch)
  assert len(transform) == len(original) == len(SPECS)
  classes, negatives = set(), 0
  for seed in range(14):
    got = transform(123, np.random.default_rng(seed))
    want = original[np.random.default_rng(seed)]
    classes.add(want["class_id"])
    negatives += want["negative"]
    assert got["text"] == want["text"]
    assert got["text_weight"] == np.float32(want["text_weight"])
    np.testing.assert_allclose(preprocess.normalize(got["pixels"]), want["query"], atol=1e-5)
    np.testing.assert_array_equal(got["mask"], want["mask"])
    np.testing.assert_allclose(got["support"], want["support"], atol=1e-4)
    assert got["support"].shape == (352, 352, 3) and got["mask"].any()  # the query mask stays on negatives
  assert len(classes) > 5 and not classes & {c for c in range(80) if c % 4 == FOLD}  # only training classes
  assert 0 < negatives < 14  # both kinds drawn


def test_no_negatives_without_negative_prob(coco_train):
  _, data_dir = coco_train
  transform = ours(data_dir, negative_prob=0.0)
  for seed in range(6):
    e = transform.sampler.draw(np.random.default_rng(seed))
    assert not e.negative and e.support != e.query and 0 <= e.text_weight < 1


def test_a_class_in_one_image_is_refused(tmp_path):
  from clipseg_jax.input_pipeline.episodes import Coco20iSampler
  from clipseg_jax.input_pipeline.pcplus import PCPlusOptions

  classes = [TRAIN_VALUES, TRAIN_VALUES[1:]]  # class value 2 (hsnet id 1, bicycle) in one image only
  with pytest.raises(ValueError, match=r"training class 1 \(bicycle\) is in 1 image"):
    Coco20iSampler(classes, FOLD, PCPlusOptions(), 0.0)


@pytest.mark.slow
def test_recipe_trains_on_the_fixture(coco_train, training_root, tmp_path):
  """A few steps of `coco20i:0` (support negatives on) on the fixture with the tiny CLIP: the run finishes
  with a finite loss."""
  from clipseg_jax.train.recipes import load_config
  from clipseg_jax.train.trainer import train

  _, data_dir = coco_train
  extra = {
    "data.name": "coco",
    "data.data_dir": str(data_dir),
    "data.workers": 0,
    "total_steps": 3,
    "checkpoint_every": 3,
    "log_every": 1,
    "batch_size": 4,
    "optim.compute_dtype": "float32",
    "model.extract_layers": "(1, 2, 3)",  # the tiny CLIP has 4 blocks
  }
  overrides = training_overrides(training_root, **extra)
  cfg = load_config(f"coco20i:{FOLD}", overrides + ["--config.data.episodes.negative_prob=0.5"])
  assert cfg.data.episodes.kind == "coco20i" and cfg.data.pcplus.image_size == 64
  result = train(cfg, tmp_path / "run", show_progress=False)
  assert result["step"] == 3
  assert all(np.isfinite(v) for k, v in result.items() if "loss" in k) and any("loss" in k for k in result)
