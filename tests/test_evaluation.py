"""Protocols on tiny fixtures in the real formats, with oracle predictors whose numbers are known by
hand, and the `clipseg-jax eval` command end to end."""

import json

import numpy as np
import pytest
from conftest import write_voc

from clipseg_jax.cli.main import main
from clipseg_jax.evaluation.protocols import EvalOptions, run_protocol
from clipseg_jax.input_pipeline import build
from clipseg_jax.input_pipeline.sources import open_source, prepared_source


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("tfds")
  build("synthetic/tiny", data_dir=d)
  voc = tmp_path_factory.mktemp("voc")
  write_voc(
    voc,
    {  # classes 1 (fold 0) and 7 (fold 1) on several val images; 12 (fold 2) unseen
      "a": ("val", [(1, (0, 6, 0, 10)), (7, (14, 20, 10, 20))]),
      "b": ("val", [(1, (4, 9, 5, 25))]),
      "c": ("val", [(7, (0, 8, 20, 30)), (1, (13, 20, 0, 5))]),
      "d": ("train", [(12, (0, 5, 0, 5))]),
    },
  )
  build("pascal_voc", data_dir=d, manual_dir=voc)
  return d


def top_half(mask):
  """The upper half of the mask's rows."""
  m = mask.astype(np.float32)
  rows = np.nonzero(m.any(1))[0]
  if rows.size:
    m[rows[0] + (rows[-1] - rows[0] + 1) // 2 :] = 0
  return m


class ReferringOracle:
  """Knows the masks: predicts the truth, nothing, its top half, or the truth faintly (probability 0.4)."""

  def __init__(self, source, mode):
    self.mode, self.masks = mode, {}
    for i in range(len(source)):
      r = source[i]
      for phrase, mask in zip(r["phrases"], r["masks"]):
        self.masks[(r["image"].tobytes(), phrase)] = mask

  def text(self, prompts):
    return list(prompts)

  def probabilities(self, image, cond):
    out = []
    for phrase in cond:
      m = self.masks[(image.tobytes(), phrase)]
      out.append(
        np.zeros(m.shape, np.float32)
        if self.mode == "empty"
        else top_half(m)
        if self.mode == "half"
        else 0.4 * m.astype(np.float32)
        if self.mode == "faint"
        else m.astype(np.float32)
      )
    return np.stack(out)


@pytest.mark.parametrize("mode", ["perfect", "empty", "half"])
def test_referring_protocol(data_dir, mode):
  source = open_source("synthetic/tiny", "test", data_dir=data_dir)
  masks = [m for i in range(len(source)) for m in source[i]["masks"]]
  fg = sum(int(m.sum()) for m in masks)
  opts = EvalOptions(data_dir=str(data_dir), dataset="synthetic/tiny", progress=False)
  numbers, examples = run_protocol(ReferringOracle(source, mode), "synthetic", opts)
  assert numbers["samples"] == len(masks) and examples
  if mode == "perfect":
    expected = fg / (1 + fg)
  elif mode == "empty":
    expected = 0.0
  else:
    kept = sum(int(top_half(m).sum()) for m in masks)
    expected = kept / (1 + fg)  # tp = kept pixels, fn = the rest, fp = 0
  assert numbers["iou_fg"]["value"] == pytest.approx(expected, rel=1e-12)
  per_sample = [m.sum() / (1 + m.sum()) if mode == "perfect" else 0.0 for m in masks]
  if mode != "half":
    assert numbers["miou"]["value"] == pytest.approx(np.mean(per_sample), rel=1e-12)


def test_report_curves_and_pictures(data_dir, tmp_path):
  """The precision/recall curves the PR picture draws are the original's (tp / (1 + tp + fp), tp / (1 +
  tp + fn)); the report writes both curve PNGs."""
  from PIL import Image

  from clipseg_jax.evaluation import plots, report

  source = open_source("synthetic/tiny", "test", data_dir=data_dir)
  masks = [m for i in range(len(source)) for m in source[i]["masks"]]
  fg, kept = sum(int(m.sum()) for m in masks), sum(int(top_half(m).sum()) for m in masks)
  opts = EvalOptions(data_dir=str(data_dir), dataset="synthetic/tiny", progress=False)
  numbers, examples = run_protocol(ReferringOracle(source, "half"), "synthetic", opts)
  curves = numbers["curves"]
  np.testing.assert_allclose(curves["precision"], kept / (1 + kept), rtol=1e-12)  # fp = 0 at every threshold
  np.testing.assert_allclose(curves["recall"], kept / (1 + fg), rtol=1e-12)
  report.write(tmp_path, "synthetic", numbers, examples, {})
  for name in ("synthetic_iou_threshold.png", "synthetic_precision_recall.png"):
    with Image.open(tmp_path / name) as im:
      assert im.size == (round(plots.FIGSIZE[0] * plots.DPI), round(plots.FIGSIZE[1] * plots.DPI))
      assert np.asarray(im.convert("L")).std() > 10  # something is drawn


def test_zero_shot_report_has_a_per_class_table(data_dir, tmp_path):
  from clipseg_jax.evaluation import report

  source = prepared_source("pascal_voc", "val", data_dir)
  numbers, examples = run_protocol(SemanticOracle(source), "pascal_zeroshot", EvalOptions(data_dir=str(data_dir)))
  table = report.write(tmp_path, "pascal_zeroshot", numbers, examples, {})
  rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ")}
  assert rows["aeroplane"].split(" | ")[1] == "100.0"  # perfect on the fixture
  assert "unseen-4" in rows["aeroplane"] and "unseen-2" not in rows["aeroplane"]
  assert rows["cow"].endswith("unseen-2, unseen-4, unseen-6, unseen-8, unseen-10 |")
  assert rows["dog"].split(" | ")[1] == "–"  # absent everywhere
  assert not list(tmp_path.glob("pascal_zeroshot_*curve*.png"))  # argmax scoring: no threshold curves


def table_cells(table: str) -> dict[str, list[str]]:
  """Markdown table rows by their first cell."""
  return {
    line.strip("| ").split(" | ")[0]: line.strip("| ").split(" | ") for line in table.splitlines() if line[:2] == "| "
  }


def test_report_prints_the_papers_columns(data_dir, tmp_path):
  """Each task's table gives the paper's columns at the paper's threshold beside the published value and
  ours at our best threshold: PhraseCut mIoU/IoU_FG at 0.3 and 0.5 and AP, one-shot the folds' mean at
  0.3, zero-shot score.py's keys for JoEm's unseen-5 split beside the paper's unseen-10 column."""
  from clipseg_jax.evaluation import report
  from clipseg_jax.evaluation.protocols import average_numbers

  source = open_source("synthetic/tiny", "test", data_dir=data_dir)
  fg = sum(int(m.sum()) for i in range(len(source)) for m in source[i]["masks"])
  opts = EvalOptions(data_dir=str(data_dir), dataset="synthetic/tiny", progress=False)
  faint, examples = run_protocol(ReferringOracle(source, "faint"), "synthetic", opts)  # p = 0.4 on the truth
  cells = table_cells(report.write(tmp_path, "phrasecut", faint, examples, {}))
  assert cells["IoU_FG (t=0.3)"][1:3] == [f"{100 * fg / (1 + fg):.1f}", "54.7"]
  assert cells["IoU_FG (t=0.5)"][1:3] == ["0.0", "–"]  # 0.4 < 0.5: nothing predicted; not in the paper
  assert cells["mIoU (t=0.3)"][2] == "43.4" and cells["AP"][2] == "76.7"
  best = faint["iou_fg"]
  assert cells["IoU_FG (t=0.3)"][3] == f"{100 * best['value']:.1f} (t={best['threshold']:.2f})"
  assert "IoU_BIN (t=" in "".join(cells)  # the metric outside the paper's columns, at the best threshold
  saved = json.loads((tmp_path / "phrasecut.json").read_text())["paper_columns"]
  assert [c["column"] for c in saved] == ["mIoU (t=0.3)", "IoU_FG (t=0.3)", "mIoU (t=0.5)", "IoU_FG (t=0.5)", "AP"]
  assert saved[1]["ours_pct"] == pytest.approx(100 * fg / (1 + fg))

  half, _ = run_protocol(ReferringOracle(source, "half"), "synthetic", opts)
  folds = {"fold0": faint, "fold1": half, "mean": average_numbers([faint, half])}
  cells = table_cells(report.markdown("pascal5i", folds))
  expected = (faint["iou_bin"]["fixed"]["0.3"] + half["iou_bin"]["fixed"]["0.3"]) / 2
  assert cells["IoU_BIN (t=0.3)"][1:3] == [f"{100 * expected:.1f}", "75.0"]
  assert cells["AP"][1] == f"{50 * (faint['ap'] + half['ap']):.1f}"

  voc = prepared_source("pascal_voc", "val", data_dir)
  zero_shot, _ = run_protocol(SemanticOracle(voc), "pascal_zeroshot", EvalOptions(data_dir=str(data_dir)))
  cells = table_cells(report.markdown("pascal_zeroshot", zero_shot))
  row = cells["unseen-10 mIoU_S (score.py: JoEm unseen-5, pas_zs_seen)"]
  assert row[1:] == [f"{100 * zero_shot['unseen-5']['miou_unseen']:.1f}", "35.7"]  # the held-out classes' mIoU
  assert cells["unseen-10 mIoU_U (score.py: JoEm unseen-5, pas_zs_unseen)"][2] == "43.1"
  assert cells["unseen-4"][1] == f"{100 * zero_shot['unseen-4']['miou_seen']:.1f}"  # both orders, by split


def test_top_half_rule():
  m = np.zeros((6, 4), bool)
  m[1:5, 1:3] = True  # rows 1-4: the top half is rows 1-2
  got = top_half(m)
  assert got.sum() == 4 and got[1:3, 1:3].all()


class SemanticOracle:
  """Zero-shot: the probability of class c is 1 exactly where the truth is c (at the model's square size,
  `ORACLE_SIZE`, where the protocol scores). One-shot: the support's class is read off its mask, and the
  query's pixels of that class are predicted."""

  def __init__(self, source):
    self.seg = {}
    for i in range(len(source)):
      r = source[i]
      self.seg[r["image"].tobytes()] = r["segmentation"][..., 0]

  def text(self, prompts):
    return list(range(len(prompts)))  # prompt k names class k (background first)

  def visual(self, pairs):
    ((image, mask),) = pairs
    values = self.seg[image.tobytes()][mask]
    return [int(np.bincount(values).argmax())]

  def probabilities(self, image, cond):
    seg = self.seg[image.tobytes()]
    return np.stack([(seg == c).astype(np.float32) for c in cond])

  def zero_shot_probabilities(self, image, cond):
    from clipseg_jax.prompts import resize_nearest

    return resize_nearest(self.probabilities(image, cond).transpose(1, 2, 0), ORACLE_SIZE).transpose(2, 0, 1)


ORACLE_SIZE = 40  # the zero-shot oracle's "model size": 20 x 30 labels squashed to 40 x 40 by nearest


def test_pascal_zeroshot_protocol(data_dir):
  source = prepared_source("pascal_voc", "val", data_dir)
  opts = EvalOptions(data_dir=str(data_dir), progress=False)
  numbers, _ = run_protocol(SemanticOracle(source), "pascal_zeroshot", opts)
  assert numbers["images"] == 3
  assert numbers["per_class_iou"]["aeroplane"] == 1.0 and numbers["per_class_iou"]["car"] == 1.0
  assert numbers["per_class_iou"]["dog"] is None  # absent from truth and prediction
  # JoEm's means count an absent class as 0. unseen-2 = cow, motorbike: both absent; unseen-4 adds
  # aeroplane (class 1, present and perfect) and sofa (absent)
  assert numbers["unseen-2"]["miou_unseen"] == 0.0
  assert numbers["unseen-4"]["miou_unseen"] == 0.25
  seen4 = [0, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 15, 16, 17, 19, 20]  # background, car (7) present
  assert numbers["unseen-4"]["miou_seen"] == pytest.approx(2 / len(seen4))
  # score.py's keys, swapped as its Evaluator receives them
  assert numbers["unseen-4"]["score_py"] == {
    "seen": 0.25,
    "unseen": pytest.approx(2 / 17),
    "harmonic": pytest.approx(numbers["unseen-4"]["harmonic"]),
  }
  assert numbers["unseen-5"]["unseen_classes"] == ["pottedplant", "sheep", "sofa", "train", "tvmonitor"]


@pytest.mark.slow  # builds a dataset and runs the CLI end to end
def test_eval_command(tiny_dir, data_dir, tmp_path, capsys):
  out = tmp_path / "eval"
  assert (
    main(
      [
        "eval",
        "--checkpoint",
        tiny_dir,
        "--task",
        "synthetic",
        "--dataset",
        "synthetic/tiny",
        "--data-dir",
        str(data_dir),
        "--limit",
        "2",
        "--out",
        str(out),
      ]
    )
    == 0
  )
  printed = capsys.readouterr().out
  assert "| mIoU" in printed and "IoU_FG" in printed
  result = json.loads((out / "synthetic.json").read_text())
  assert len(result["results"]["curves"]["iou_fg"]) == 49
  assert (out / "synthetic_predictions.png").stat().st_size > 0 and (out / "synthetic.md").exists()
  assert (out / "synthetic_iou_threshold.png").exists() and (out / "synthetic_precision_recall.png").exists()


def test_visual_task_on_text_only_checkpoint(tiny_dir, tmp_path, capsys):
  import shutil

  d = tmp_path / "text_only"
  shutil.copytree(tiny_dir, d)
  manifest = json.loads((d / "clipseg_manifest.json").read_text())
  manifest["prompts"]["trained"] = ["text"]  # the model's record says so
  (d / "clipseg_manifest.json").write_text(json.dumps(manifest))
  assert main(["eval", "--checkpoint", str(d), "--task", "pascal5i", "--data-dir", str(tmp_path)]) == 2
  assert "trained on text prompts only" in capsys.readouterr().err
  # An export from before the manifest kept it in config.json: still honoured.
  (d / "clipseg_manifest.json").unlink()
  config = json.loads((d / "config.json").read_text())
  config["trained_prompts"] = ["text"]
  (d / "config.json").write_text(json.dumps(config))
  assert main(["eval", "--checkpoint", str(d), "--task", "pascal5i", "--data-dir", str(tmp_path)]) == 2
  assert "trained on text prompts only" in capsys.readouterr().err


def test_phrasecut_probabilities_are_the_originals_test_inputs(tiny_checkpoint, torch):
  """PhraseCut is scored as the original's score.py does: the image squashed to S x S by torch's
  bilinear interpolate (align_corners=True) on float pixels, normalised, through the model."""
  import torch.nn.functional as F

  from clipseg_jax import load_model
  from clipseg_jax.evaluation.protocols import ModelPredictor
  from clipseg_jax.preprocess import MEAN, STD
  from clipseg_jax.tokenizer import tokenize

  directory, ref = tiny_checkpoint
  model = load_model(directory)
  image = np.random.default_rng(1).integers(0, 256, (37, 53, 3), np.uint8)
  phrases = ["a cat", "the left sofa"]
  size = model.image_size
  x = F.interpolate(
    torch.from_numpy(image).permute(2, 0, 1)[None].float(), (size, size), mode="bilinear", align_corners=True
  )
  x = (x / 255 - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
  ids, mask = tokenize(model.tokenizer, phrases, model.config.text_config.max_position_embeddings)
  with torch.no_grad():
    logits = ref(
      input_ids=torch.from_numpy(ids).long(),
      attention_mask=torch.from_numpy(mask).long(),
      pixel_values=x.expand(len(phrases), -1, -1, -1),
    ).logits
  predictor = ModelPredictor(model)
  ours = predictor.square_probabilities(image, predictor.text(phrases))
  # The resized pixels agree with torch's to float32 rounding (< 1e-4 of 255, summed in another order),
  # which the random-weight model amplifies to ~2e-5 here.
  np.testing.assert_allclose(ours, torch.sigmoid(logits).numpy(), atol=1e-4)
  assert np.abs(ours - torch.sigmoid(logits).numpy()).mean() < 1e-6


def test_phrasecut_protocol_scores_at_the_model_size(monkeypatch, torch):
  """Truth masks are resized to S x S as torch's nearest interpolate does, and scored there."""
  import torch.nn.functional as F

  import clipseg_jax.input_pipeline as pipeline

  rng = np.random.default_rng(0)
  records = [
    {
      "image": rng.integers(0, 256, (30, 47, 3), np.uint8),
      "phrases": ["a", "b"],
      "masks": [rng.random((30, 47)) > 0.5 for _ in range(2)],
    },
    {"image": rng.integers(0, 256, (41, 23, 3), np.uint8), "phrases": ["c"], "masks": [rng.random((41, 23)) > 0.7]},
  ]
  size = 16

  def torch_nearest(m):
    return F.interpolate(torch.from_numpy(m.astype(np.float32))[None, None], (size, size), mode="nearest")[0, 0].numpy()

  class Oracle:  # predicts the truth as torch would resize it
    def text(self, phrases):
      return phrases

    def square_probabilities(self, image, phrases):
      r = next(r for r in records if r["image"] is image)
      return np.stack([torch_nearest(m) for m in r["masks"]])

  monkeypatch.setattr(pipeline, "open_source", lambda *a, **k: records)
  numbers, _ = run_protocol(Oracle(), "phrasecut", EvalOptions(data_dir="unused", progress=False))
  fg = sum(torch_nearest(m).sum() for r in records for m in r["masks"])
  assert numbers["iou_fg"]["value"] == pytest.approx(fg / (1 + fg), rel=1e-12)  # perfect at S x S
  assert numbers["samples"] == 3


def test_phrasecut_protocol_matches_the_original(tiny_checkpoint, monkeypatch, torch):
  """The whole PhraseCut path against the original's, re-implemented here: datasets/phrasecut.py
  `load_sample` (aug_crop=False: image bilinear align_corners=True to S x S, /255, ImageNet normalisation;
  mask nearest), the raw phrase as the condition, and score.py's FixedIntervalMetrics(resize_pred=True,
  sigmoid=True) with the dataset index as class, on transformers' model with the same random weights."""
  import torch.nn.functional as F
  from test_metrics import ref_ap
  from transformers import AutoTokenizer

  import clipseg_jax.input_pipeline as pipeline
  from clipseg_jax import load_model
  from clipseg_jax.tokenizer import DEFAULT_DIR

  directory, ref = tiny_checkpoint
  model = load_model(directory)
  size = model.image_size
  rng = np.random.default_rng(3)
  records = []
  for h, w, phrases in (
    (37, 53, ["a cat", "the left sofa"]),
    (48, 29, ["tree"]),
    (30, 30, ["sky", "a red car", "man"]),
  ):
    yy, xx = np.mgrid[:h, :w]
    masks = [(yy - rng.uniform(0, h)) ** 2 + (xx - rng.uniform(0, w)) ** 2 < rng.uniform(20, 300) for _ in phrases]
    records.append({"image": rng.integers(0, 256, (h, w, 3), np.uint8), "phrases": phrases, "masks": masks})
  monkeypatch.setattr(pipeline, "open_source", lambda *a, **k: records)
  numbers, _ = run_protocol(model, "phrasecut", EvalOptions(data_dir="unused", progress=False))

  tok = AutoTokenizer.from_pretrained(str(DEFAULT_DIR))
  mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
  thresholds = np.linspace(0, 1, 51)[1:-1]
  stats, classes = [], []  # per sample: [threshold, (tp, fp, fn, tn)]
  for record in records:
    for phrase, mask in zip(record["phrases"], record["masks"]):
      img = torch.from_numpy(record["image"]).permute(2, 0, 1).unsqueeze(0).float()
      img = F.interpolate(img, (size, size), mode="bilinear", align_corners=True)[0] / 255.0
      seg = torch.from_numpy(mask.astype("uint8")).view(1, 1, *mask.shape)
      seg = F.interpolate(seg, (size, size), mode="nearest")[0, 0]
      with torch.no_grad():
        logits = ref(pixel_values=((img - mean) / std)[None], **tok([phrase], return_tensors="pt")).logits
      p, g = torch.sigmoid(logits[0]).flatten(), seg.float().flatten()
      p_sorted = p.sort()
      p, g = p_sorted.values, g[p_sorted.indices]
      counts = []
      for t in thresholds:
        valid = torch.where(p > t)[0]
        n = int(valid[0]) if len(valid) > 0 else len(g)
        fn, tp = int(g[:n].sum()), int(g[n:].sum())
        counts.append((tp, len(g) - n - tp, fn, n - fn))
      stats.append(counts), classes.append(len(classes))  # class = the dataset index
  stats = np.array(stats, np.float64)
  tp, fp, fn, tn = stats.sum(0).T
  fgiou = tp / (1 + tp + fp + fn)
  biniou = 0.5 * fgiou + 0.5 * tn / (1 + tn + fn + fp)
  per_class = stats[..., 0] / (1 + stats[..., 0] + stats[..., 1] + stats[..., 2])
  miou = per_class.mean(0)
  at = {t: int(np.argmin(np.abs(thresholds - float(t)))) for t in ("0.3", "0.5")}
  assert 0.05 < fgiou[at["0.3"]] < 0.95  # not a degenerate prediction
  for t, j in at.items():
    assert numbers["iou_fg"]["fixed"][t] == pytest.approx(fgiou[j], abs=1e-4)
    assert numbers["miou"]["fixed"][t] == pytest.approx(miou[j], abs=1e-4)
    assert numbers["iou_bin"]["fixed"][t] == pytest.approx(biniou[j], abs=1e-4)
  assert numbers["iou_fg"]["value"] == pytest.approx(fgiou.max(), abs=1e-4)
  assert numbers["miou"]["value"] == pytest.approx(miou.max(), abs=1e-4)
  assert numbers["ap"] == pytest.approx(ref_ap(tp, fp, fn), abs=1e-4)
  assert numbers["samples"] == len(classes) == 6
