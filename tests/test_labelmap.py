"""Label maps on hand-built probabilities, the palette PNG and legend, threshold specs, calibration on a tiny
folder whose answer is known by hand, and the CLI (`segment --label-map --thresholds`, `calibrate`) on the
embedded model."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from clipseg_jax import labelmap, preprocess
from clipseg_jax.cli.main import main
from clipseg_jax.preprocess import MEAN, STD, resize_map

PROBS = np.array(
  [
    [[0.9, 0.3, 0.6, 0.2, 0.55]],
    [[0.8, 0.4, 0.7, 0.1, 0.55]],
    [[0.1, 0.45, 0.2, 0.3, 0.1]],
  ],
  np.float32,
)  # 3 prompts over a 1x5 image


def test_label_map_by_hand():
  assert labelmap.label_map(PROBS, 0.5).tolist() == [[1, 0, 2, 0, 1]]  # argmax; ties: the first prompt
  assert labelmap.label_map(PROBS, [0.95, 0.5, 0.4]).tolist() == [[2, 3, 2, 0, 2]]  # per-prompt thresholds
  assert labelmap.label_map(PROBS, 0.55).tolist() == [[1, 0, 2, 0, 0]]  # strict: 0.55 is not above 0.55
  batch = labelmap.label_map(np.stack([PROBS, PROBS[::-1]]), 0.5)
  assert batch.shape == (2, 1, 5) and batch.dtype == np.uint8 and batch[1].tolist() == [[3, 0, 2, 0, 2]]
  with pytest.raises(ValueError, match="need one threshold or 3"):
    labelmap.label_map(PROBS, [0.5, 0.5])
  with pytest.raises(ValueError, match=r"thresholds must be in \[0, 1\]"):
    labelmap.label_map(PROBS, 1.5)


def test_palette_png_and_legend(tmp_path):
  colors = labelmap.palette(254)
  assert colors.shape == (255, 3) and tuple(colors[0]) == (0, 0, 0)
  assert len({tuple(c) for c in colors}) == 255  # every class its own colour
  labels = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
  legend_path = labelmap.save_label_map(tmp_path / "x_labels.png", labels, ["cat", "dog"])
  image = Image.open(tmp_path / "x_labels.png")
  assert image.mode == "P" and np.array_equal(np.asarray(image), labels)
  shown = np.asarray(image.convert("RGB"))
  assert tuple(shown[0, 1]) == tuple(colors[1]) and tuple(shown[0, 2]) == tuple(colors[2])
  legend = json.loads(legend_path.read_text())["legend"]
  assert legend_path.name == "x_labels_legend.json"
  assert [(e["label"], e["name"], e["color"]) for e in legend] == [
    (0, "background", [0, 0, 0]),
    (1, "cat", colors[1].tolist()),
    (2, "dog", colors[2].tolist()),
  ]


def test_read_thresholds(tmp_path):
  assert labelmap.read_thresholds("0.3", ["a", "b"]).tolist() == pytest.approx([0.3, 0.3])
  assert labelmap.read_thresholds("0.3,0.6", ["a", "b"]).tolist() == pytest.approx([0.3, 0.6])
  (tmp_path / "t.json").write_text(json.dumps({"thresholds": {"b": 0.7}}))
  assert labelmap.read_thresholds(tmp_path / "t.json", ["a", "b"]).tolist() == pytest.approx([0.5, 0.7])
  with pytest.raises(ValueError, match="a number, a comma list or a .json file"):
    labelmap.read_thresholds("high", ["a"])
  with pytest.raises(ValueError, match="need one threshold or 2"):
    labelmap.read_thresholds("0.1,0.2,0.3", ["a", "b"])
  # One line, not a traceback, for tables of the wrong shape or for other prompts.
  for table, match in (
    ([0.5], "a 'thresholds' table of numbers"),
    ({"b": None}, "table of numbers"),
    ({"z": 0.4}, "none of"),
  ):
    (tmp_path / "bad.json").write_text(json.dumps({"thresholds": table}))
    with pytest.raises(ValueError, match=match):
      labelmap.read_thresholds(tmp_path / "bad.json", ["a", "b"])


def test_calibration_folder_names_each_class_once(tmp_path):
  (tmp_path / "classes.txt").write_text("cat\ndog\ncat\n")
  with pytest.raises(ValueError, match=r"more than once: \['cat'\]"):
    labelmap.read_folder(tmp_path)


class EchoModel:
  """A stand-in model whose probability for prompt i is the image's channel i / 255 (8x8 images, no resize):
  calibration's answer can then be worked out by hand."""

  image_size = 8

  def encode_prompts(self, prompts, templates=None):
    return jnp.arange(len(prompts))

  def encode_images(self, pixels):
    return pixels

  def decode(self, pixels, cond):
    p = np.clip(np.asarray(pixels) * STD + MEAN, 1e-6, 1 - 1e-6)[..., np.asarray(cond)]  # [N, 8, 8, P]
    return jnp.asarray(np.log(p / (1 - p)).transpose(0, 3, 1, 2))


def calibration_folder(root):
  """Image a: class 1 in rows 0-1 (channel 0 at 0.72 / 0.82), a distractor row 2 at 0.58, an ignored pixel at
  0.98; class 2 in rows 4-5 (channel 1 at 0.33, else 0.12). Image b: neither class (0.22 / 0.12)."""
  (root / "images").mkdir(parents=True)
  (root / "labels").mkdir()
  (root / "classes.txt").write_text("red thing\nblue thing\n")
  a = np.zeros((8, 8, 3), np.uint8)
  a[..., 0], a[..., 1] = 56, 31
  a[0:2, 0:4, 0], a[0:2, 4:8, 0], a[2, :, 0], a[7, 7, 0] = 184, 209, 148, 250
  a[4:6, :, 1] = 84
  labels = np.zeros((8, 8), np.uint8)
  labels[0:2], labels[4:6], labels[7, 7] = 1, 2, 255
  b = np.zeros((8, 8, 3), np.uint8)
  b[..., 0], b[..., 1] = 56, 31
  for name, image, label in (("a", a, labels), ("b", b, np.zeros((8, 8), np.uint8))):
    Image.fromarray(image).save(root / "images" / f"{name}.png")
    Image.fromarray(label, "L").save(root / "labels" / f"{name}.png")


def test_calibrate_by_hand(tmp_path):
  # Red: t < 0.58 also takes the distractor row (IoU 16/24), t in 0.60-0.70 is exact (IoU 1), 0.75-0.80 keeps
  # half (1/2); the ignored pixel never counts. Blue: t <= 0.10 takes all 63 counted pixels (16/63), 0.15-0.30
  # is exact. Image b counts only where something is predicted (IoU 0). The lowest of tied thresholds wins.
  calibration_folder(tmp_path)
  result = labelmap.calibrate(EchoModel(), tmp_path, progress=False)
  assert result["thresholds"] == {"red thing": 0.6, "blue thing": 0.15}
  assert result["miou"] == {"red thing": pytest.approx(1.0), "blue thing": pytest.approx(1.0)}
  assert result["images"] == 2 and len(result["grid"]) == 19
  coarse = labelmap.calibrate(EchoModel(), tmp_path, grid=[0.1, 0.5, 0.8], progress=False)
  # red: 0.1 takes everything in both images ((16/63 + 0) / 2), 0.5 the distractor row too (16/24, image b
  # not counted), 0.8 half the class (1/2); blue: 0.1 gives (16/63 + 0) / 2, 0.5 and 0.8 miss it (0)
  assert coarse["thresholds"] == {"red thing": 0.5, "blue thing": 0.1}
  assert coarse["miou"] == {"red thing": pytest.approx(16 / 24), "blue thing": pytest.approx(16 / 63 / 2)}
  (tmp_path / "labels" / "b.png").unlink()
  with pytest.raises(FileNotFoundError, match="b.png not found"):
    labelmap.calibrate(EchoModel(), tmp_path, progress=False)


def test_calibrate_images_downscaled_on_load(tmp_path, monkeypatch):
  """An image over MAX_SIDE is downscaled when read; its probabilities are brought back to its full-size
  labels (about the answer by hand). Labels of another aspect (drawn before EXIF rotation) are
  refused with a line naming the file."""
  calibration_folder(tmp_path)
  for name in ("a", "b"):  # 16 x 16 copies (each pixel 2 x 2): read at 8 x 8 under MAX_SIDE = 8
    for kind, resample in (("images", Image.NEAREST), ("labels", Image.NEAREST)):
      f = tmp_path / kind / f"{name}.png"
      Image.open(f).resize((16, 16), resample).save(f)
  monkeypatch.setattr(preprocess, "MAX_SIDE", 8)
  with pytest.warns(UserWarning, match="downscaled to 8x8"):
    result = labelmap.calibrate(EchoModel(), tmp_path, progress=False)
  # The round trip 16 -> 8 -> 16 blurs each edge by a pixel: the by-hand answer within one grid step.
  assert result["thresholds"] == pytest.approx({"red thing": 0.6, "blue thing": 0.15}, abs=0.051)
  assert min(result["miou"].values()) > 0.8
  Image.new("L", (16, 12)).save(tmp_path / "labels" / "b.png")
  with (
    pytest.warns(UserWarning, match="downscaled"),
    pytest.raises(ValueError, match=r"b.png: labels are 16x12 \(WxH\) but .*b.png is 8x8 as displayed"),
  ):
    labelmap.calibrate(EchoModel(), tmp_path, progress=False)


def scene_folder(root) -> list[str]:
  """Scene 0 of the synthetic stream as a one-image calibration folder for two of its phrases."""
  from clipseg_jax.input_pipeline import synthetic

  examples, _ = synthetic.scene_examples(0, 0)
  classes = ["blue star", "green triangle"]
  labels = np.zeros(examples[0]["mask"].shape, np.uint8)
  for e in examples:
    if e["phrase"] in classes:
      labels[e["mask"]] = classes.index(e["phrase"]) + 1
  (root / "images").mkdir(parents=True)
  (root / "labels").mkdir()
  (root / "classes.txt").write_text("\n".join(classes) + "\n")
  Image.fromarray(examples[0]["image"]).save(root / "images" / "scene.png")
  Image.fromarray(labels, "L").save(root / "labels" / "scene.png")
  return classes


def test_cli_calibrate_then_label_map_on_the_embedded_model(tmp_path):
  classes = scene_folder(tmp_path / "folder")
  thresholds = tmp_path / "thresholds.json"
  assert main(["calibrate", str(tmp_path / "folder"), "--out", str(thresholds)]) == 0
  table = json.loads(thresholds.read_text())
  assert set(table["thresholds"]) == set(classes) and table["images"] == 1
  assert all(t in table["grid"] for t in table["thresholds"].values())
  assert all(m > 0.5 for m in table["miou"].values())  # the embedded model finds both shapes
  out = tmp_path / "out"
  image = str(tmp_path / "folder" / "images" / "scene.png")
  args = ["segment", image, "--prompt", classes[0], "--prompt", classes[1], "--label-map", "--logits"]
  assert main([*args, "--thresholds", str(thresholds), "--out", str(out)]) == 0
  written = np.asarray(Image.open(out / "scene_labels.png"))
  assert Image.open(out / "scene_labels.png").mode == "P"
  # the rule re-implemented here: a prompt counts where its probability exceeds its threshold; the most
  # probable one wins
  probs = resize_map(1 / (1 + np.exp(-np.load(out / "scene_logits.npz")["logits"])), *written.shape)
  t = np.array([table["thresholds"][c] for c in classes], np.float32)[:, None, None]
  expected = np.where((probs > t).any(0), np.where(probs > t, probs, -1).argmax(0) + 1, 0)
  assert (written != expected).mean() < 1e-3  # float32 vs float64 ties at the thresholds aside
  legend = json.loads((out / "scene_labels_legend.json").read_text())["legend"]
  assert [e["name"] for e in legend] == ["background", *classes]
  assert Image.open(out / "scene_labels_overlay.png").size == (2 * 256 + 4, 256)
  assert main(["calibrate", str(tmp_path / "folder"), "--out", str(thresholds)]) == 2  # no overwrite
