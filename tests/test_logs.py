"""TensorBoard logs of a training run: the learning rate, pictures of predictions and the config as
hyper-parameters, read back from the event files."""

import json

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def read_events(logdir):
  """tag -> [(step, value)] for scalars, tag -> [(step, (width, height))] for images, and the hparams
  plugin's payloads."""
  import tensorflow as tf
  from tensorboard.plugins.hparams import plugin_data_pb2

  scalars, images, hparams = {}, {}, []
  for path in sorted(logdir.glob("events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for v in event.summary.value:
        plugin = v.metadata.plugin_data.plugin_name
        if plugin == "hparams":
          data = plugin_data_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)
          if data.HasField("session_start_info"):
            hparams.append(data.session_start_info.hparams)
          if data.HasField("session_end_info"):
            hparams.append(data.session_end_info.status)
        elif plugin == "images":
          t = tf.make_ndarray(v.tensor)  # [width, height, encoded...]
          images.setdefault(v.tag, []).append((event.step, (int(t[0]), int(t[1]))))
        elif plugin == "scalars":
          scalars.setdefault(v.tag, []).append((event.step, float(tf.make_ndarray(v.tensor))))
  return scalars, images, hparams


def test_tensorboard_holds_learning_rate_pictures_and_hparams(trained_run):
  from clipseg_jax.train import step as steps
  from clipseg_jax.train.recipes import load_config

  workdir, overrides = trained_run
  cfg = load_config("synthetic", overrides)

  scalars, images, hparams = read_events(workdir / "tb")
  schedule = steps.make_schedule(  # the paper's warm-up + cosine, spelled out from the config
    cfg.optim.learning_rate, cfg.optim.end_learning_rate, cfg.optim.warmup_steps, cfg.total_steps
  )
  lr = dict(scalars["learning_rate"])
  assert sorted(lr) == [2, 4, 6]  # log_every = 2
  # The rate of the update that produced step n (optax counts from 0): warm-up, then cosine decay.
  np.testing.assert_allclose([lr[n] for n in (2, 4, 6)], [float(schedule(n - 1)) for n in (2, 4, 6)], rtol=1e-6)
  assert lr[2] < lr[4] and lr[6] < cfg.optim.learning_rate
  assert {"loss", "grad_norm", "images_per_s", "eval/iou_fg@0.5", "eval/ap"} <= set(scalars)

  (tag,) = images
  assert [step for step, _ in images[tag]] == [3, 6]
  width, height = images[tag][0][1]
  assert width == 3 * 160 and height > 160  # image | prediction | truth, one row per example

  from tensorboard.plugins.hparams import api_pb2

  session, end = hparams  # the session's hparams, then its end: the HParams tab lists the run as finished
  assert end == api_pb2.Status.Value("STATUS_SUCCESS")
  saved = json.loads((workdir / "config.json").read_text())
  assert session["batch_size"].number_value == saved["batch_size"]
  assert session["model.clip"].string_value == saved["model"]["clip"]
  assert json.loads(session["model.extract_layers"].string_value) == saved["model"]["extract_layers"]
