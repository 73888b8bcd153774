"""Training logs people look at, in TensorBoard (workdir/tb, process 0 only): scalars (loss, learning
rate, throughput, evaluation), pictures of predictions (image | prediction | truth) and the run's config
as hyper-parameters, written through clu's metric writers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

TB_DIR = "tb"


def hparams(config: dict) -> dict:
  """The config flattened to `a.b.c` keys with the types TensorBoard's hparams plugin shows (bool, int,
  float, str): sequences and None become their JSON text."""
  out = {}

  def visit(d, prefix):
    for k, v in d.items():
      if isinstance(v, dict):
        visit(v, f"{prefix}{k}.")
      elif isinstance(v, (bool, int, float, str)):
        out[f"{prefix}{k}"] = v
      else:
        out[f"{prefix}{k}"] = json.dumps(v)

  visit(config, "")
  return out


class Writer:
  """clu `SummaryWriter` on workdir/tb, flushed after every write (a crashed run keeps its logs)."""

  def __init__(self, workdir: Path):
    from clu import metric_writers

    self.writer = metric_writers.SummaryWriter(str(Path(workdir) / TB_DIR))

  def hparams(self, config: dict):
    self.writer.write_hparams(hparams(config))
    self.writer.flush()

  def session_end(self, status: str):
    """Mark the run's hparams session ended (`status`: SUCCESS, FAILURE, ...), so TensorBoard's HParams tab
    lists it as finished, with its final metrics, instead of as still running."""
    import tensorflow as tf
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.Status.Value(f"STATUS_{status}"), end_time_secs=time.time())
    summary = summary_pb2.Summary()
    summary.value.add(
      tag=metadata.SESSION_END_INFO_TAG,
      metadata=metadata.create_summary_metadata(plugin_data_pb2.HParamsPluginData(session_end_info=end)),
      tensor=metadata.NULL_TENSOR,
    )
    # clu's writer has no call for a raw summary: write through the TF2 writer it wraps.
    with self.writer._summary_writer.as_default():
      tf.summary.experimental.write_raw_pb(summary.SerializeToString(), step=0)
    self.writer.flush()

  def scalars(self, step: int, values: dict):
    self.writer.write_scalars(step, {k: float(v) for k, v in values.items()})
    self.writer.flush()

  def images(self, step: int, images: dict):
    """`images`: name -> PIL image or uint8 HxWx3 array."""
    self.writer.write_images(step, {k: np.asarray(v)[None] for k, v in images.items()})
    self.writer.flush()

  def close(self):
    self.writer.close()
