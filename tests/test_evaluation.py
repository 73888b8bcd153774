"""Protocols on tiny fixtures in the real formats, with oracle predictors whose numbers are known by
hand, and the `clipseg-jax eval` command end to end."""

import dataclasses
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
  """Knows the masks: predicts the truth, nothing, or its top half."""

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


def test_top_half_rule():
  m = np.zeros((6, 4), bool)
  m[1:5, 1:3] = True  # rows 1-4: the top half is rows 1-2
  got = top_half(m)
  assert got.sum() == 4 and got[1:3, 1:3].all()


class SemanticOracle:
  """Zero-shot: the probability of class c is 1 exactly where the truth is c. One-shot: the support's
  class is read off its mask, and the query's pixels of that class are predicted."""

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


def test_pascal_zeroshot_protocol(data_dir):
  source = prepared_source("pascal_voc", "val", data_dir)
  opts = EvalOptions(data_dir=str(data_dir), progress=False)
  numbers, _ = run_protocol(SemanticOracle(source), "pascal_zeroshot", opts)
  assert numbers["images"] == 3
  assert numbers["per_class_iou"]["aeroplane"] == 1.0 and numbers["per_class_iou"]["car"] == 1.0
  assert numbers["per_class_iou"]["dog"] is None  # absent from truth and prediction
  # unseen-2 = cow, motorbike: absent -> NaN; unseen-4 adds aeroplane (class 1): present and perfect
  assert np.isnan(numbers["unseen-2"]["miou_unseen"])
  assert numbers["unseen-4"]["miou_unseen"] == 1.0 and numbers["unseen-4"]["miou_seen"] == 1.0


def test_one_shot_protocol(data_dir):
  source = prepared_source("pascal_voc", "val", data_dir)
  opts = EvalOptions(data_dir=str(data_dir), fold=0, episodes=12, progress=False)
  numbers, examples = run_protocol(SemanticOracle(source), "pascal5i", opts)
  fold = numbers["fold0"]
  # every episode uses class 1 (the only fold-0 class on two images); perfect predictions
  assert fold["miou"]["value"] == pytest.approx(fold["iou_fg"]["value"])
  assert 0.97 < fold["iou_fg"]["value"] < 1.0  # tp / (1 + tp)
  with pytest.raises(ValueError, match="fold-2 class with two images"):
    run_protocol(SemanticOracle(source), "pascal5i", dataclasses.replace(opts, fold=2))


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


def test_visual_task_on_text_only_checkpoint(tiny_dir, tmp_path, capsys):
  import shutil

  d = tmp_path / "text_only"
  shutil.copytree(tiny_dir, d)
  config = json.loads((d / "config.json").read_text())
  config["trained_prompts"] = ["text"]
  (d / "config.json").write_text(json.dumps(config))
  assert main(["eval", "--checkpoint", str(d), "--task", "pascal5i", "--data-dir", str(tmp_path)]) == 2
  assert "trained on text prompts only" in capsys.readouterr().err
