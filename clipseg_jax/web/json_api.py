"""The work behind the HTTP server's JSON API, without HTTP: a request checked cheaply (`parse`), then
run (`run`: decode, the model, the overlay and masks as PNG data URLs, optionally a label map and each
prompt's instances) on a worker pool. Prompts may be expressions (`clipseg_jax.algebra`)."""

from __future__ import annotations

import base64
import dataclasses
import io
import math
import threading
import time

import numpy as np
from PIL import Image

from clipseg_jax import algebra, instances, labelmap, preprocess, visualize
from clipseg_jax.web.limits import ServerLimits
from clipseg_jax.web.uploads import check_pixels, decode_base64, decode_upload
from clipseg_jax.web.workers import WorkerPool

WARM_UP_SIZE = 64  # the blank image compiled at start


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _flag(request: dict, key: str) -> bool:
  value = request.get(key, False)
  if not isinstance(value, bool):
    raise ValueError(f"{key} must be true or false, got {value!r}")
  return value


def png_data_url(image: Image.Image) -> str:
  buf = io.BytesIO()
  image.save(buf, "PNG")
  return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@dataclasses.dataclass
class Job:
  """A checked request, ready for a worker."""

  raw_image: bytes
  prompts: list[str]
  threshold: float | None
  logic: str = algebra.DEFAULT_LOGIC
  label_thresholds: np.ndarray | None = None  # per prompt, when a label map is asked for
  min_area: int | None = None  # in image pixels, when instances are asked for


class ApiSegmenter:
  """The warm model behind the JSON API, compiled once at start. Requests are checked cheaply in the
  caller's thread (`parse`), then run (`run`) on a fixed pool of workers behind a bounded queue
  (`submit`); the model itself is called one request at a time. Refusals are ValueErrors (`UploadError`,
  `UploadTooLarge` among them) and `Busy`."""

  def __init__(self, model, name: str, limits: ServerLimits | None = None):
    self.model, self.name = model, name
    self.limits = limits or ServerLimits()
    self.lock = threading.Lock()  # one model call at a time
    self.model.predict(Image.new("RGB", (WARM_UP_SIZE, WARM_UP_SIZE)), ["warm-up"])  # before the first visitor
    self.pool = WorkerPool(self.limits.workers, self.limits.queue_size, self.limits.retry_after_s)

  @property
  def max_side(self) -> int:
    return min(self.limits.max_side, preprocess.MAX_SIDE)

  def info(self) -> dict:
    return {
      "checkpoint": self.name,
      "image_size": self.model.image_size,
      "max_side": self.max_side,
      "max_prompts": self.limits.max_prompts,
      "max_prompt_chars": self.limits.max_prompt_chars,
      "max_pixels": self.limits.max_pixels,
    }

  def parse(self, request) -> Job:
    """Everything that can be checked without decoding the image or running the model."""
    if not isinstance(request, dict):
      raise ValueError("the request body must be a JSON object")
    raw = decode_base64(request.get("image"))
    prompts = request.get("prompts")
    if isinstance(prompts, str):
      prompts = [prompts]
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
      raise ValueError("prompts must be a list of strings")
    for i, p in enumerate(prompts):
      if len(p) > self.limits.max_prompt_chars:
        raise ValueError(f"prompt {i + 1} has {len(p)} characters; the limit is {self.limits.max_prompt_chars}")
    prompts = [p.strip() for p in prompts if p.strip()]
    if not prompts:
      raise ValueError("type at least one prompt")
    if len(prompts) > self.limits.max_prompts:
      raise ValueError(f"at most {self.limits.max_prompts} prompts per request, got {len(prompts)}")
    leaves = algebra.compile_expressions(prompts).prompts  # parsed: a malformed expression is the client's error
    if len(leaves) > self.limits.max_prompts:
      raise ValueError(
        f"at most {self.limits.max_prompts} distinct prompts per request (each expression's operands count), "
        f"got {len(leaves)}"
      )
    threshold = request.get("threshold")
    preprocess.check_threshold(threshold)
    logic = request.get("logic", algebra.DEFAULT_LOGIC)
    if logic not in algebra.LOGICS:
      raise ValueError(f"logic must be one of {', '.join(algebra.LOGICS)}, got {logic!r}")
    job = Job(raw, prompts, threshold, logic)
    if _flag(request, "label_map"):
      job.label_thresholds = labelmap.as_thresholds(request.get("thresholds", labelmap.DEFAULT_THRESHOLD), len(prompts))
    if _flag(request, "instances"):
      min_area = request.get("min_area", 0)
      if not _is_number(min_area) or not 0 <= min_area <= self.limits.max_pixels or min_area != int(min_area):
        raise ValueError(f"min_area must be a whole number of pixels in [0, max_pixels], got {min_area!r}")
      job.min_area = int(min_area)
    check_pixels(raw, self.limits.max_pixels)
    return job

  def run(self, job: Job) -> dict:
    image, notes = decode_upload(job.raw_image, self.max_side)
    start = time.perf_counter()
    with self.lock:  # one vision pass; expressions combined on the host (nothing compiled per request)
      probs = algebra.predict_one(self.model, image, job.prompts, logic=job.logic, on_host=True)
    seconds = time.perf_counter() - start
    shown = probs if job.threshold is None else (probs > job.threshold).astype(np.float32)
    masks = [
      {"prompt": p, "mask": png_data_url(visualize.mask_image(m)), "coverage": visualize.coverage(m)}
      for p, m in zip(job.prompts, shown)
    ]
    if job.min_area is not None:
      t = instances.DEFAULT_THRESHOLD if job.threshold is None else job.threshold
      for entry, p in zip(masks, probs):
        entry["instances"] = instances.instances_at(
          p, self.model.image_size, t, min_area=job.min_area, limit=self.limits.max_instances
        )
    out = {
      "overlay": png_data_url(visualize.overlay(image, shown, job.prompts)),
      "masks": masks,
      "notes": notes,
      "seconds": round(seconds, 3),
      "size": [image.width, image.height],
    }
    if job.label_thresholds is not None:
      labels = labelmap.label_map(probs, job.label_thresholds)
      out["label_map"] = {
        "labels": png_data_url(labelmap.label_image(labels, len(job.prompts))),
        "overlay": png_data_url(labelmap.label_overlay(image, labels, job.prompts)),
        "legend": labelmap.legend(job.prompts),
      }
    return out

  def segment(self, request) -> dict:
    """parse + run, in the calling thread (no queue)."""
    return self.run(self.parse(request))

  def submit(self, job: Job):
    """`run(job)` queued for a worker (a Future); a full queue is `Busy`."""
    return self.pool.submit(self.run, job)

  def close(self):
    """Stop the workers once the jobs queued so far are done."""
    self.pool.close()
