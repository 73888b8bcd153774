"""Metrics against an independent brute-force computation, and sharded-vs-single equivalence."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from clipseg_jax import preprocess
from clipseg_jax.metrics import ConfusionMatrix, fixed_threshold_metrics
from clipseg_jax.metrics.binary import average_precision, simps_avg


def ref_simpson_panel(x0, x1, x2, y0, y1, y2) -> float:
  """One Simpson panel on irregular spacing, the textbook parabola through three points, with the
  zero-width guards of SciPy's old `_basic_simps` (a ratio whose denominator is 0 counts as 0)."""
  h0, h1 = x1 - x0, x2 - x1
  ratio = h0 / h1 if h1 != 0 else 0.0
  inv = 1.0 / ratio if ratio != 0 else 0.0
  mid = (h0 + h1) ** 2 / (h0 * h1) if h0 * h1 != 0 else 0.0
  return (h0 + h1) / 6.0 * ((2.0 - inv) * y0 + mid * y1 + (2.0 - ratio) * y2)


def ref_simps(y, x) -> float:
  """scipy.integrate.simps(y, x) as before SciPy 1.11 (even='avg'), panel by panel."""
  y, x, n = list(map(float, y)), list(map(float, x)), len(y)

  def simpson(lo, hi):  # points lo..hi, hi - lo even
    return sum(ref_simpson_panel(*x[i : i + 3], *y[i : i + 3]) for i in range(lo, hi - 1, 2))

  if n % 2:
    return simpson(0, n - 1)
  first_trap = 0.5 * (x[1] - x[0]) * (y[0] + y[1])
  last_trap = 0.5 * (x[-1] - x[-2]) * (y[-1] + y[-2])
  return 0.5 * ((simpson(0, n - 2) + last_trap) + (first_trap + simpson(1, n - 1)))


def ref_ap(tp, fp, fn) -> float:
  """The original metrics.py's AP, re-derived: lists over the thresholds with tp + fp > 0, a set of
  (recall, precision) pairs sorted by recall alone, then simps."""
  keep = [j for j in range(len(tp)) if tp[j] + fp[j] > 0]
  precisions = [float(tp[j]) / (1 + float(tp[j]) + float(fp[j])) for j in keep]
  recalls = [float(tp[j]) / (1 + float(tp[j]) + float(fn[j])) for j in keep]
  recalls, precisions = zip(*sorted(list(set(zip(recalls, precisions))), key=lambda x: x[0]))
  return ref_simps(precisions, recalls)


def brute_force(probs, targets, classes, ignore=255):
  """Loops over thresholds and samples; torch's bilinear interpolate (align_corners=True, as the
  original's resize_pred=True) for the resize."""
  torch = pytest.importorskip("torch")

  ts = np.linspace(0, 1, 51)[1:-1].astype(np.float32)
  sums = np.zeros((49, 4))
  per_class = {}
  for p, t, c in zip(probs, targets, classes):
    p = torch.nn.functional.interpolate(
      torch.from_numpy(p)[None, None], size=t.shape, mode="bilinear", align_corners=True
    )[0, 0].numpy()
    for k, thr in enumerate(ts):
      pred, valid, fg = p > thr, t != ignore, t == 1
      row = [
        (pred & fg & valid).sum(),
        (pred & ~fg & valid).sum(),
        (~pred & fg & valid).sum(),
        (~pred & ~fg & valid).sum(),
      ]
      sums[k] += row
      per_class.setdefault(c, np.zeros((49, 4)))[k] += row
  tp, fp, fn, tn = sums.T
  iou_fg = tp / (1 + tp + fp + fn)
  iou_bin = (iou_fg + tn / (1 + tn + fn + fp)) / 2
  miou = np.mean([v[:, 0] / (1 + v[:, 0] + v[:, 1] + v[:, 2]) for v in per_class.values()], axis=0)
  return iou_fg, iou_bin, miou, ref_ap(tp, fp, fn)


@pytest.mark.parametrize("with_classes", [False, True])
def test_against_brute_force(with_classes):
  rng = np.random.RandomState(0)
  probs, targets = [], []
  for i in range(6):
    h, w = rng.randint(8, 30, 2)
    t = (rng.rand(h, w) > 0.6).astype(np.uint8)
    t[rng.rand(h, w) > 0.9] = 255  # ignored pixels
    if i % 2:  # a prediction at another size (resized to the target's)
      probs.append(rng.rand(16, 16).astype(np.float32))
    else:
      probs.append(np.clip((t == 1) * 0.4 + rng.rand(h, w) * 0.6, 0, 1).astype(np.float32))
    targets.append(t)
  classes = [i % 3 for i in range(6)] if with_classes else list(range(6))
  got = fixed_threshold_metrics(probs, targets, classes if with_classes else None)
  iou_fg, iou_bin, miou, ap = brute_force(probs, targets, classes)
  np.testing.assert_allclose(got["iou_fg"], iou_fg, rtol=1e-12)
  np.testing.assert_allclose(got["iou_bin"], iou_bin, rtol=1e-12)
  np.testing.assert_allclose(got["miou"], miou, rtol=1e-12)
  assert got["ap"] == pytest.approx(ap, rel=1e-12)
  assert len(got["thresholds"]) == 49 and got["thresholds"][0] == pytest.approx(0.02)


def test_resize_align_corners_by_hand():
  m = np.array([[0.0, 1.0], [2.0, 4.0]], np.float32)
  got = preprocess.resize_map(m, 3, 3, align_corners=True)
  want = [[0.0, 0.5, 1.0], [1.0, 1.75, 2.5], [2.0, 3.0, 4.0]]  # corners kept, centre the mean
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)
  np.testing.assert_allclose(preprocess.bilinear_matrix(4, 1, align_corners=True), [[1, 0, 0, 0]])  # out 1: src 0
  np.testing.assert_allclose(preprocess.bilinear_matrix(1, 3, align_corners=True), [[1], [1], [1]])
  # the default stays torch's align_corners=False (pixel centres): 2 -> 4 is 0, .25, .75, 1
  np.testing.assert_allclose(preprocess.bilinear_matrix(2, 4) @ [0.0, 1.0], [0, 0.25, 0.75, 1])


@pytest.mark.parametrize("shape,size", [((24, 24), (37, 53)), ((5, 7), (3, 2)), ((4, 6), (1, 9)), ((1, 3), (4, 1))])
@pytest.mark.parametrize("align_corners", [True, False])
def test_resize_matches_torch(torch, shape, size, align_corners):
  p = np.random.RandomState(0).rand(2, *shape).astype(np.float32)
  want = torch.nn.functional.interpolate(
    torch.from_numpy(p)[:, None], size=size, mode="bilinear", align_corners=align_corners
  )[:, 0].numpy()
  np.testing.assert_allclose(preprocess.resize_map(p, *size, align_corners=align_corners), want, rtol=0, atol=1e-6)


def test_average_precision_tied_recalls():
  # thresholds 1 and 2 share recall 8 / 11 with precisions 8 / 19 and 8 / 14; the last predicts nothing
  tp = np.array([10, 8, 8, 5, 3, 0])
  fp = np.array([20, 10, 5, 2, 1, 0])
  fn = np.array([0, 2, 2, 5, 7, 10])
  pairs = list(set(zip((tp / (1.0 + tp + fn))[:5].tolist(), (tp / (1.0 + tp + fp))[:5].tolist())))
  assert len(pairs) == 5 and len({r for r, _ in pairs}) == 4
  got = average_precision(tp, fp, fn)
  assert got == pytest.approx(ref_ap(tp, fp, fn), rel=1e-14, abs=1e-15)
  # the tie's order matters (a zero-width Simpson interval), so sorting by (recall, precision) differs
  r, p = np.array(sorted(pairs)).T
  assert abs(ref_simps(p, r) - got) > 1e-3
  # a set of floats iterates in the same order under any hash seed (float hashes are not randomised)
  code = f"print(list(set(zip({(tp / (1.0 + tp + fn)).tolist()}, {(tp / (1.0 + tp + fp)).tolist()}))))"
  outs = {
    subprocess.run(
      [sys.executable, "-c", code], env={"PYTHONHASHSEED": seed}, capture_output=True, text=True, check=True
    ).stdout
    for seed in ("0", "1", "12345")
  }
  assert len(outs) == 1


@pytest.mark.parametrize("n", [2, 3, 4, 5, 8, 11])
def test_simps_avg_against_panels(n):
  rng = np.random.RandomState(n)
  x = np.sort(rng.rand(n))  # irregular spacing, as recalls are
  x[n // 2] = x[n // 2 - 1]  # and one zero-width interval
  y = rng.rand(n)
  assert simps_avg(y, x) == pytest.approx(ref_simps(y, x), rel=1e-13, abs=1e-15)
  x = np.sort(rng.rand(n))
  assert simps_avg(y, x) == pytest.approx(ref_simps(y, x), rel=1e-13, abs=1e-15)
  if n % 2:  # odd counts: SciPy's rule has not changed
    scipy_integrate = pytest.importorskip("scipy.integrate")
    assert simps_avg(y, x) == pytest.approx(scipy_integrate.simpson(y, x=x), rel=1e-13)
  a, b = rng.rand(2)  # linear integrands are exact under either rule
  assert simps_avg(a * x + b, x) == pytest.approx(a * (x[-1] ** 2 - x[0] ** 2) / 2 + b * (x[-1] - x[0]), rel=1e-12)


@pytest.mark.parametrize("n_pairs", [4, 5])
def test_average_precision_even_and_odd_counts(n_pairs):
  tp = np.array([40, 30, 20, 10, 5][:n_pairs] + [0])
  fp = np.array([60, 20, 8, 2, 1][:n_pairs] + [0])
  fn = 40 - tp
  r, p = tp[:n_pairs] / (1.0 + tp[:n_pairs] + fn[:n_pairs]), tp[:n_pairs] / (1.0 + tp[:n_pairs] + fp[:n_pairs])
  order = np.argsort(r)
  want = ref_simps(p[order], r[order])
  assert average_precision(tp, fp, fn) == pytest.approx(want, rel=1e-14)
  if n_pairs == 4:  # even='avg' by hand: two Simpson panels' mean plus the mean of the two trapezoids
    x, y = r[order], p[order]
    by_hand = 0.5 * (
      ref_simpson_panel(*x[:3], *y[:3])
      + 0.5 * (x[3] - x[2]) * (y[3] + y[2])
      + 0.5 * (x[1] - x[0]) * (y[1] + y[0])
      + ref_simpson_panel(*x[1:], *y[1:])
    )
    assert average_precision(tp, fp, fn) == pytest.approx(by_hand, rel=1e-14)
  assert average_precision(np.zeros(3), np.zeros(3), np.ones(3)) == 0.0  # nothing predicted


def test_predictor_resizes_with_align_corners(tiny_model):
  from clipseg_jax.evaluation.protocols import ModelPredictor

  im = np.random.RandomState(0).randint(0, 256, (37, 53, 3), np.uint8)
  cond = tiny_model.encode_text(["a cat"])
  (out,) = tiny_model.predict_iter([im], cond, align_corners=True)
  probs = 1 / (1 + np.exp(-out["logits"].astype(np.float64)))
  np.testing.assert_allclose(out["masks"], preprocess.resize_map(probs, 37, 53, align_corners=True), atol=1e-6)
  np.testing.assert_allclose(ModelPredictor(tiny_model).probabilities(im, cond), out["masks"], atol=1e-6)
  default = tiny_model.predict(im, ["a cat"])[0]  # people get HF's align_corners=False
  np.testing.assert_allclose(default, preprocess.resize_map(probs, 37, 53), atol=1e-6)
  assert np.abs(default - out["masks"]).max() > 1e-4


def test_hand_computed_cases():
  truth = np.zeros((10, 10), np.uint8)
  truth[:, :4] = 1  # 40 foreground pixels
  perfect = fixed_threshold_metrics([truth.astype(np.float32)], [truth])
  np.testing.assert_allclose(perfect["iou_fg"], 40 / 41)  # tp / (1 + tp): the +1 smoothing
  empty = fixed_threshold_metrics([np.zeros((10, 10), np.float32)], [truth])
  np.testing.assert_allclose(empty["iou_fg"], 0.0)
  half = np.zeros((10, 10), np.float32)
  half[:5, :4] = 1.0  # half of the object, nothing else
  got = fixed_threshold_metrics([half], [truth])
  np.testing.assert_allclose(got["iou_fg"], 20 / (1 + 20 + 0 + 20))
  np.testing.assert_allclose(got["iou_bin"], (20 / 41 + 60 / (1 + 60 + 20)) / 2)


def test_confusion_matrix():
  cm = ConfusionMatrix(3)
  cm.add(np.array([[0, 1], [2, 2]]), np.array([[0, 1], [1, 255]]))
  np.testing.assert_array_equal(cm.iou(), [1.0, 0.5, 0.0])  # class 2: one false positive
  assert cm.mean_iou([0, 1]) == 0.75


def test_sharded_equals_single_device():
  """jit over 8 simulated devices with the batch sharded gives the numpy counts exactly."""
  code = textwrap.dedent("""
      import os
      os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
      import jax, jax.numpy as jnp, numpy as np
      from functools import partial
      from jax.sharding import NamedSharding, PartitionSpec as P, AxisType
      from clipseg_jax.metrics import Accumulator, confusion_counts
      assert jax.device_count() == 8
      mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
      rng = np.random.RandomState(1)
      probs = rng.rand(16, 24, 24).astype(np.float32)
      targets = rng.randint(0, 2, (16, 24, 24)).astype(np.uint8)
      targets[:, :2] = 255
      shard = NamedSharding(mesh, P("data"))
      counts = jax.jit(partial(confusion_counts, xp=jnp), in_shardings=(shard, shard),
                       out_shardings=shard)(jax.device_put(probs, shard), jax.device_put(targets, shard))
      assert len(counts.sharding.device_set) == 8
      total = jax.jit(lambda c: c.sum(0), out_shardings=NamedSharding(mesh, P()))(counts)
      single = confusion_counts(probs, targets)
      assert np.array_equal(np.asarray(counts), single) and np.array_equal(np.asarray(total), single.sum(0))
      a, b = Accumulator().add(np.asarray(counts)), Accumulator().add(single)
      assert all(np.array_equal(a.result()[k], b.result()[k]) for k in ("iou_fg", "iou_bin", "miou"))
      print("OK")
  """)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0 and out.stdout.strip().endswith("OK"), out.stderr[-2000:]
