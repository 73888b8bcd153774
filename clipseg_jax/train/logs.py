"""Training logs people look at, in TensorBoard (workdir/tb, process 0 only): scalars (loss, learning
rate, throughput, evaluation), pictures of predictions (image | prediction | truth) and the run's config
as hyper-parameters, written through clu's metric writers."""

from __future__ import annotations

import json
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

  def scalars(self, step: int, values: dict):
    self.writer.write_scalars(step, {k: float(v) for k, v in values.items()})
    self.writer.flush()

  def images(self, step: int, images: dict):
    """`images`: name -> PIL image or uint8 HxWx3 array."""
    self.writer.write_images(step, {k: np.asarray(v)[None] for k, v in images.items()})
    self.writer.flush()

  def close(self):
    self.writer.close()
