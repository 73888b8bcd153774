"""Periodic evaluation while training: IoU on the held-out split and a picture of predictions."""

from __future__ import annotations

from pathlib import Path

import jax

from clipseg_jax.api import ClipSeg
from clipseg_jax.train import freeze
from clipseg_jax.train import step as steps
from clipseg_jax.train.recipe_model import recipe_manifest


class Evaluator:
  """Periodic IoU on the held-out split -> (scalars, a picture of predictions); the picture is also saved
  in workdir/samples every `sample_every` steps (when given a workdir: process 0)."""

  def __init__(self, cfg, config, frozen, tokenizer, workdir: Path | None):
    self.cfg, self.config, self.frozen, self.tokenizer, self.workdir = cfg, config, frozen, tokenizer, workdir
    self.model = None  # built at the first evaluation, from the trained params (then only updated)

  def __call__(self, trainable, step: int):
    from clipseg_jax.evaluation import report
    from clipseg_jax.evaluation.protocols import EvalOptions, predictor_for, referring
    from clipseg_jax.input_pipeline.sources import data_dir_or_default

    # The whole model (trained leaves over the frozen ones), its reduce kernels scaled (fold_activation_scale).
    params = freeze.merge(self.frozen, jax.device_get(trainable))
    params = steps.fold_activation_scale(params, self.cfg.model.activation_scale)
    if self.model is None:
      self.model = ClipSeg(self.config, params, self.tokenizer, manifest=recipe_manifest(self.cfg, self.config))
    else:
      self.model.params = params
    opts = EvalOptions(
      data_dir=data_dir_or_default(self.cfg.data.data_dir),
      dataset=self.cfg.data.name,
      split=self.cfg.data.eval_split,
      limit=self.cfg.eval_images,
      progress=False,
    )
    predictor = predictor_for(self.model, withhold_prompt=self.cfg.model.withhold_prompt)
    numbers, examples = referring(predictor, opts, self.cfg.data.name, self.cfg.data.eval_split)
    picture = report.picture(examples)
    picture_due = self.cfg.sample_every and step % self.cfg.sample_every == 0 or step == self.cfg.total_steps
    if self.workdir and picture_due:
      (self.workdir / "samples").mkdir(exist_ok=True)
      picture.save(self.workdir / "samples" / f"step_{step:07d}.png")
    scalars = {
      "eval/iou_fg@0.5": numbers["iou_fg"]["fixed"]["0.5"],
      "eval/iou_fg_best": numbers["iou_fg"]["value"],
      "eval/miou_best": numbers["miou"]["value"],
      "eval/ap": numbers["ap"],
    }
    return scalars, picture
