"""Metrics against an independent brute-force computation, and sharded-vs-single equivalence."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from scipy.integrate import simpson

from clipseg_jax.metrics import ConfusionMatrix, fixed_threshold_metrics


def brute_force(probs, targets, classes, ignore=255):
  """Loops over thresholds and samples; torch's bilinear interpolate for the resize."""
  torch = pytest.importorskip("torch")

  ts = np.linspace(0, 1, 51)[1:-1].astype(np.float32)
  sums = np.zeros((49, 4))
  per_class = {}
  for p, t, c in zip(probs, targets, classes):
    p = torch.nn.functional.interpolate(
      torch.from_numpy(p)[None, None], size=t.shape, mode="bilinear", align_corners=False
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
  pairs = {(tp[k] / (1 + tp[k] + fn[k]), tp[k] / (1 + tp[k] + fp[k])) for k in range(49) if tp[k] + fp[k] > 0}
  r, prec = np.array(sorted(pairs)).T
  return iou_fg, iou_bin, miou, simpson(prec, x=r)


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
