"""PASCAL VOC zero-shot scored as the original code scores it, checked against a re-implementation of the
original protocol written here from its definitions: timojl/clipseg `score.py` (test_dataset `pascal_zs`),
`datasets/pascal_zeroshot.py`, `models/clipseg.py` CLIPSegMultiLabel, and JoEm's `VOCSegmentation`
(`transform=False`: `Normalize` then `ToTensor`), `get_unseen_idx` / `get_seen_idx` and `Evaluator`, run with
transformers' CLIPSegForImageSegmentation on the same random weights as ours."""

import numpy as np
import pytest
from conftest import make_hf_model, save_hf, write_voc
from PIL import Image

from clipseg_jax import load_model
from clipseg_jax.config import tiny_config
from clipseg_jax.evaluation.protocols import EvalOptions, run_protocol
from clipseg_jax.input_pipeline import build

# JoEm data_loader/__init__.py, as written there
JOEM_VOC = [
  "background", "airplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
  "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip
JOEM_UNSEEN = {  # get_unseen_idx(n) for 'pascal'
  2: [10, 14],
  4: [10, 14, 1, 18],
  5: [16, 17, 18, 19, 20],  # SPNet setting
  6: [10, 14, 1, 18, 8, 20],
  8: [10, 14, 1, 18, 8, 20, 19, 5],
  10: [10, 14, 1, 18, 8, 20, 19, 5, 9, 16],
}
SIZE = 64  # the model's square input (352 for the released models; the tiny model's native size here)
# VOC images (20 x 30, a void band at rows 10-11) holding seen and unseen classes of several splits
SPECS = {
  "2008_000001": ("val", [(1, (0, 9, 0, 15)), (15, (12, 20, 15, 30))]),
  "2008_000002": ("val", [(10, (0, 9, 10, 30)), (16, (12, 20, 0, 12))]),
  "2008_000003": ("val", [(20, (2, 9, 2, 12)), (11, (13, 20, 5, 25)), (14, (0, 8, 20, 30))]),
  "2008_000004": ("val", [(18, (12, 20, 0, 30)), (12, (0, 6, 0, 10)), (3, (0, 9, 18, 28))]),
  "2008_000005": ("train", [(7, (0, 5, 0, 5))]),
}


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
  """(VOC2012 folder in its real layout, prepared TFDS data dir)."""
  manual, data_dir = tmp_path_factory.mktemp("voc"), tmp_path_factory.mktemp("tfds")
  write_voc(manual, SPECS)
  build("pascal_voc", data_dir=data_dir, manual_dir=manual)
  return manual / "VOCdevkit" / "VOC2012", data_dir


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """(ours, transformers' reference) on the same random weights. The tiny random decoder barely listens to
  its prompt (the later layers' vision inputs drown FiLM's change) and saturates its sigmoid: the deeper
  `reduces` are scaled down and the head's logits shrunk, so that the argmax over the 21 prompts varies
  from pixel to pixel and its winners are not ties."""
  torch = pytest.importorskip("torch")
  hf = make_hf_model(tiny_config(), seed=0)
  with torch.no_grad():
    for name, p in hf.named_parameters():
      if name.startswith(("decoder.reduces.1", "decoder.reduces.2")):
        p.mul_(0.02)
      elif name.startswith("decoder.transposed_convolution"):
        p.mul_(0.3)
  directory = tmp_path_factory.mktemp("zero_shot_model")
  ref = save_hf(hf, directory)
  ours = load_model(str(directory))
  ours.image_size = SIZE
  return ours, ref


def original_scores(ref, voc_root, size):
  """The original protocol: (per-class IoU, {n: score.py's {'seen', 'unseen', 'harmonic', 'overall'}},
  argmax maps, their top-2 margins)."""
  import torch
  import torch.nn.functional as F
  from transformers import AutoTokenizer

  from clipseg_jax.tokenizer import DEFAULT_DIR

  tok = AutoTokenizer.from_pretrained(str(DEFAULT_DIR))  # OpenAI CLIP's BPE, as clip.tokenize
  text = tok(JOEM_VOC, padding=True, return_tensors="pt")  # raw class names, no template
  confusion, preds, margins = np.zeros((21, 21)), [], []
  for name in (voc_root / "ImageSets" / "Segmentation" / "val.txt").read_text().split():
    # JoEm VOCSegmentation(transform=False): Normalize (numpy, mean/std tuples), then ToTensor
    img = np.array(Image.open(voc_root / "JPEGImages" / f"{name}.jpg").convert("RGB")).astype(np.float32)
    label = np.array(np.array(Image.open(voc_root / "SegmentationClass" / f"{name}.png"), dtype=np.uint8))
    img /= 255.0
    img -= (0.485, 0.456, 0.406)
    img /= (0.229, 0.224, 0.225)
    image = torch.from_numpy(img.astype(np.float32).transpose((2, 0, 1))).float()
    label = torch.from_numpy(label.astype(np.float32)).float().long()
    # PascalZeroShot: torchvision Resize((352, 352)) on the tensor (bilinear; antialias off for tensors in
    # the torchvision of the time = F.interpolate), the label by nearest
    image = F.interpolate(image[None], (size, size), mode="bilinear", align_corners=False, antialias=False)
    label = F.interpolate(label[None, None].float(), (size, size), mode="nearest")[0, 0].long()
    # CLIPSegMultiLabel: -10 + sigmoid per class name, background x 3
    with torch.no_grad():
      logits = ref(pixel_values=image.expand(21, -1, -1, -1), **text).logits
    out = torch.ones(21, size, size) * -10
    for class_id, class_name in enumerate(JOEM_VOC):
      fac = 3 if class_name == "background" else 1
      out[class_id] += torch.sigmoid(logits[class_id]) * fac
    pred, gt = out.argmax(0).numpy(), label.numpy()
    top2 = np.sort(out.numpy(), 0)[-2:]
    preds.append(pred), margins.append(top2[1] - top2[0])
    # JoEm Evaluator.add_batch / _generate_matrix
    keep = (gt >= 0) & (gt < 21)
    confusion += np.bincount(21 * gt[keep].astype("int") + pred[keep], minlength=21**2).reshape(21, 21)
  with np.errstate(invalid="ignore", divide="ignore"):
    by_class = np.diag(confusion) / (confusion.sum(1) + confusion.sum(0) - np.diag(confusion))
  scores = {}
  for n, unseen in JOEM_UNSEEN.items():
    seen = [c for c in range(21) if c not in unseen]
    # score.py: Evaluator(21, get_unseen_idx(n), get_seen_idx(n)) into (num_class, seen_idx, unseen_idx)
    evaluator_seen, evaluator_unseen = sorted(unseen), seen
    s = np.nanmean(np.nan_to_num(by_class[evaluator_seen]))
    u = np.nanmean(np.nan_to_num(by_class[evaluator_unseen]))
    scores[n] = {
      "seen": s,
      "unseen": u,
      "harmonic": 2 * s * u / (s + u),
      "overall": np.nanmean(np.nan_to_num(by_class)),
    }
  return by_class, scores, preds, margins


def test_pascal_zero_shot_matches_the_original(voc, models):
  voc_root, data_dir = voc
  ours, ref = models
  by_class, scores, preds, margins = original_scores(ref, voc_root, SIZE)
  # the fixture exercises the protocol: many classes win somewhere, no winner is a near-tie
  assert len(np.unique(np.concatenate([p.ravel() for p in preds]))) >= 10
  assert sum(int((m < 1e-5).sum()) for m in margins) <= 2  # where float rounding could flip the argmax
  assert np.nansum(by_class[1:] > 0) >= 3  # some class besides background scores

  opts = EvalOptions(data_dir=str(data_dir), progress=False, unseen=tuple(JOEM_UNSEEN))
  numbers, _ = run_protocol(ours, "pascal_zeroshot", opts)
  assert numbers["prompts"] == JOEM_VOC
  per_class = np.array([np.nan if v is None else v for v in numbers["per_class_iou"].values()])
  np.testing.assert_allclose(per_class, by_class, atol=1e-4)
  assert numbers["miou_overall"] == pytest.approx(scores[2]["overall"], abs=1e-4)
  for n, original in scores.items():
    split = numbers[f"unseen-{n}"]
    assert split["score_py"]["seen"] == pytest.approx(original["seen"], abs=1e-4)  # as score.py reports
    assert split["score_py"]["unseen"] == pytest.approx(original["unseen"], abs=1e-4)
    assert split["miou_unseen"] == pytest.approx(original["seen"], abs=1e-4)  # by meaning: swapped back
    assert split["miou_seen"] == pytest.approx(original["unseen"], abs=1e-4)
    assert split["harmonic"] == pytest.approx(original["harmonic"], abs=1e-4)


def test_unknown_split_fails_before_any_work(tiny_dir, tmp_path, capsys):
  from clipseg_jax.cli.main import main

  args = ["eval", "--checkpoint", tiny_dir, "--task", "pascal_zeroshot", "--data-dir", str(tmp_path), "--unseen", "3"]
  assert main(args) == 2
  assert "JoEm defines no unseen-3 split" in capsys.readouterr().err


@pytest.mark.parametrize("shape", [(375, 500), (500, 333), (20, 30)])
def test_original_pixels_match_torch(torch, shape):
  """The zero-shot input: normalised at full size, then torch's bilinear (align_corners=False) to 352, down
  and up, to float32 rounding (torch computes the source coordinate with one fused multiply-add)."""
  import torch.nn.functional as F

  from clipseg_jax.evaluation.zero_shot import original_pixels
  from clipseg_jax.preprocess import normalize

  image = np.random.default_rng(0).integers(0, 256, (*shape, 3), np.uint8)
  x = torch.from_numpy(np.ascontiguousarray(normalize(image).transpose(2, 0, 1)))[None]
  want = F.interpolate(x, (352, 352), mode="bilinear", align_corners=False, antialias=False)[0].permute(1, 2, 0)
  np.testing.assert_allclose(original_pixels(image, 352), want.numpy(), atol=1e-6)
