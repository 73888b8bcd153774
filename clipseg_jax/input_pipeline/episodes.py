"""COCO-20i training episodes, as the original CLIPSeg trains on them (timojl/clipseg experiments/coco.yaml).

The original's `COCOWrapper('train', fold, image_size=352, mask='text_and_crop_blur_highlight352',
negative_prob=p)` (datasets/coco_wrapper.py) over hsnet's data/coco.py `DatasetCOCO` (train split), and
training.py with `mix: True`, `mix_text_min: 0.0`, `prompt: shuffle+`:
  - hsnet's training classes for fold f: the 60 not in the fold (class ids 0..79 except f + 4k); its per-class
    image lists (its `splits/coco/trn/foldF.pkl`) are taken here as the images whose label map holds the class
    (value class + 1); the epoch length is the number of images in those lists (indices are ignored);
  - per sample (`load_frame`): the class uniform among the 60, the query uniform among its images, the support
    uniform among them again until it is not the query (numpy `choice(x, 1, replace=False)` each);
  - images PIL-bilinear to S x S (torchvision's Resize on a PIL image), masks label == class + 1 (no ignore
    label), torch nearest to S x S;
  - with probability p (COCOWrapper, `torch.rand`) a negative: whole episodes are drawn again (after an index,
    `torch.randint`, hsnet ignores) until one has another class; its support image replaces the support and
    the support mask becomes zero. The text (the query's class) and the query mask stay;
  - the condition: a `shuffle+` template with the class name (`sample_prompts`), the support's
    `crop_blur_highlight352` prompt, and w ~ U(0, 1) (`mix_text_min` 0, no `mix_text_max`) in
    w * text + (1 - w) * visual, always (the PhraseCut-only "no support" override does not apply).
One numpy Generator per sample stands in for the original's numpy (hsnet) and torch (COCOWrapper,
training.py) streams, used in that order: episode, negative draw, the negative's episodes, template, weight.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image

from clipseg_jax import prompts
from clipseg_jax.input_pipeline.pcplus import PCPlusOptions, support_prompt

# hsnet / COCOWrapper's COCO_CLASSES: index = hsnet class id = label value - 1 (the prompt's class name).
COCO_CLASSES = (
  "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
  "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
  "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
  "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
  "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
  "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
  "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
  "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
  "hair drier", "toothbrush",
)  # fmt: skip
N_FOLDS = 4
KINDS = ("coco20i",)


def coco20i_train_classes(fold: int) -> list[int]:
  """hsnet's `build_class_ids` for the train split: the 60 class ids (0-based) not in fold f's f + 4k."""
  if fold not in range(N_FOLDS):
    raise ValueError(f"COCO-20i fold must be 0-3, got {fold}")
  held = {fold + N_FOLDS * k for k in range(len(COCO_CLASSES) // N_FOLDS)}
  return [c for c in range(len(COCO_CLASSES)) if c not in held]


@dataclasses.dataclass(frozen=True)
class EpisodeOptions:
  """`data.episodes`: which episodic sampler (`kind`), its fold and the support-negative probability
  (COCOWrapper's `negative_prob`). Image size, prompt mode, templates and the mix range come from
  `data.pcplus` (`PCPlusOptions`)."""

  kind: str = "coco20i"
  fold: int = 0
  negative_prob: float = 0.0

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"data.episodes.kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
    if not 0.0 <= self.negative_prob <= 1.0:
      raise ValueError(f"data.episodes.negative_prob must be in [0, 1], got {self.negative_prob}")

  @classmethod
  def from_config(cls, cfg) -> EpisodeOptions:
    d = dict(cfg)
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f"unknown data.episodes option(s): {', '.join(sorted(unknown))}")
    return cls(**d)


class SemanticSource:
  """A prepared semantic split (`builders.common.semantic_features`, e.g. `coco`), records in image-id order
  (hsnet's sorted names): class lists read once without decoding pixels; images as PIL decodes them.
  Picklable (grain workers)."""

  def __init__(self, name: str, split: str, data_dir):
    from clipseg_jax.input_pipeline.sources import prepared_source

    self._raw = prepared_source(name, split, data_dir).data_source
    rows = []
    for i in range(len(self._raw)):
      feature = self._feature_at(i)
      if "classes" not in feature or "segmentation" not in feature:
        raise ValueError(f"dataset {name!r} ({split}) is not a semantic dataset: record {i} has no classes")
      rows.append(
        (feature["image_id"].bytes_list.value[0].decode(), i, [int(c) for c in feature["classes"].int64_list.value])
      )
    rows.sort()
    self.ids = [r[0] for r in rows]
    self._index = [r[1] for r in rows]
    self.classes = [r[2] for r in rows]  # label values present (1-based, no 0 / 255)

  def __len__(self):
    return len(self.ids)

  def _feature_at(self, raw_index: int):
    from tensorflow.core.example import example_pb2

    return example_pb2.Example.FromString(self._raw[raw_index]).features.feature

  def image(self, i: int) -> np.ndarray:
    """uint8 [H, W, 3] as PIL decodes the stored file (hsnet's `Image.open(...).convert('RGB')`)."""
    from clipseg_jax.input_pipeline.sources import decode_image

    return decode_image(self._feature_at(self._index[i])["image"].bytes_list.value[0])

  def segmentation(self, i: int) -> np.ndarray:
    """uint8 [H, W] label values as stored."""
    with Image.open(io.BytesIO(self._feature_at(self._index[i])["segmentation"].bytes_list.value[0])) as im:
      seg = np.asarray(im)
    return seg[..., 0] if seg.ndim == 3 else seg


def hsnet_view(image: np.ndarray, seg: np.ndarray, label: int | None, size: int) -> tuple[np.ndarray, np.ndarray]:
  """An image as hsnet's transform sees it for label value `label`: (uint8 [size, size, 3] by PIL bilinear,
  torchvision's Resize on a PIL image; bool [size, size] of seg == label by torch nearest; None: all False)."""
  pixels = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
  if label is None:
    return pixels, np.zeros((size, size), bool)
  return pixels, prompts.resize_nearest(seg == label, size)


@dataclasses.dataclass(frozen=True)
class Episode:
  """The draws of one COCO-20i training sample (record indices in image-id order, hsnet class ids)."""

  cls: int  # hsnet class id of the query (the text's class)
  query: int
  support: int  # the support whose image is shown (a negative's: another class's support)
  negative: bool  # the support shows another class, its mask zero
  template: int
  text_weight: float


class Coco20iSampler:
  """hsnet's train-split episode draws plus COCOWrapper's support negatives and training.py's condition."""

  def __init__(self, classes_per_record, fold: int, opts: PCPlusOptions, negative_prob: float):
    self.opts, self.negative_prob = opts, negative_prob
    self.class_ids = np.asarray(coco20i_train_classes(fold))
    images_of = {int(c): [] for c in self.class_ids}
    for i, values in enumerate(classes_per_record):
      for v in values:
        if v - 1 in images_of:
          images_of[v - 1].append(i)
    for c, images in images_of.items():
      if len(images) < 2:
        raise ValueError(
          f"COCO-20i fold {fold}: training class {c} ({COCO_CLASSES[c]}) is in {len(images)} image(s) of the "
          "split; hsnet's episodes need two (query and a different support)"
        )
    self.images_of = {c: np.asarray(v) for c, v in images_of.items()}
    self.length = len({i for v in images_of.values() for i in v})  # hsnet's len(img_metadata)

  def frame(self, rng: np.random.Generator) -> tuple[int, int, int]:
    """(class, query, support) with hsnet's `load_frame` calls (`choice(x, 1, replace=False)`)."""
    c = int(rng.choice(self.class_ids, 1, replace=False)[0])
    images = self.images_of[c]
    q = int(rng.choice(images, 1, replace=False)[0])
    while True:
      s = int(rng.choice(images, 1, replace=False)[0])
      if s != q:
        return c, q, s

  def draw(self, rng: np.random.Generator) -> Episode:
    """One sample's draws in the original's order: the episode, COCOWrapper's negative (a uniform draw, then
    an ignored index and a whole episode until its class differs), the template, the text weight."""
    c, q, s = self.frame(rng)
    negative = False
    if self.negative_prob > 0 and rng.random() < self.negative_prob:
      negative, other = True, c
      while other == c:
        rng.integers(0, self.length)  # COCOWrapper's torch.randint index: hsnet ignores it
        other, _, s = self.frame(rng)
    template = int(rng.integers(len(self.opts.templates)))
    weight = float(rng.uniform(0.0, self.opts.mix_max))
    return Episode(c, q, s, negative, template, weight)


class Coco20iTransform:
  """Callable (index, rng) -> one training sample (the keys `PCPlusTransform` gives: pixels, mask, text,
  support, text_weight), host path only. Picklable for grain workers."""

  def __init__(self, source: SemanticSource, episodes: EpisodeOptions, opts: PCPlusOptions):
    if opts.device_augment:
      raise ValueError("COCO-20i episodes are made on the host: set data.pcplus.device_augment=False")
    if not opts.visual_prompts:
      raise ValueError("COCO-20i training mixes text and visual prompts: set data.pcplus.visual_prompts=True")
    self.source, self.opts = source, opts
    self.sampler = Coco20iSampler(source.classes, episodes.fold, opts, episodes.negative_prob)

  def __len__(self):
    return self.sampler.length

  def __call__(self, index: int, rng: np.random.Generator) -> dict:
    del index  # hsnet ignores it: every sample is a fresh episode
    opts, size = self.opts, self.opts.image_size
    e = self.sampler.draw(rng)
    label = e.cls + 1
    pixels, mask = hsnet_view(self.source.image(e.query), self.source.segmentation(e.query), label, size)
    s_pixels, s_mask = hsnet_view(
      self.source.image(e.support), self.source.segmentation(e.support), None if e.negative else label, size
    )
    return {
      "pixels": pixels.astype(np.float32),
      "mask": mask.astype(np.float32),
      "text": opts.templates[e.template].format(COCO_CLASSES[e.cls]),
      "support": support_prompt(s_pixels, s_mask, opts.prompt_mode, size),
      "text_weight": np.float32(e.text_weight),
    }


def make_transform(cfg_data, opts: PCPlusOptions):
  """The episodic transform a config's `data` asks for (`data.episodes.kind`)."""
  from clipseg_jax.input_pipeline.sources import data_dir_or_default

  episodes = EpisodeOptions.from_config(cfg_data.episodes)
  source = SemanticSource(cfg_data.name, cfg_data.train_split, data_dir_or_default(cfg_data.data_dir))
  return Coco20iTransform(source, episodes, opts)
