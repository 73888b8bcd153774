"""Video and frame streams: segment every frame of a video file or a folder of frames with one set of
prompts, encoded once; frames go through the model in batches, probabilities are optionally smoothed
over time, and the results are written as mask/overlay videos or PNG frames.

Video files are read and written with PyAV (the optional `video` extra); a folder of frames needs
nothing beyond the base install. Temporal smoothing is an exponential moving average of each prompt's
probabilities: s_0 = p_0, s_t = alpha * p_t + (1 - alpha) * s_(t-1). `alpha` is the weight of the
current frame: 1 leaves the maps as they are, 0.5 averages over about the last 3 frames (the EMA's
centre of mass lies (1 - alpha) / alpha frames back), smaller is smoother and lags more. It is taken
on the maps at the model's resolution, before the resize to the frame's size (bilinear resizing is
linear, so the order does not change the result, and it is cheaper).
"""

from __future__ import annotations

import collections
import dataclasses
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clipseg_jax import preprocess, visualize
from clipseg_jax.project import install_hint

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts"}
BATCH_SIZE = 8  # frames per vision-tower call
DEFAULT_FPS = 25.0  # the frame rate of a video written from a folder of frames, unless told
VIDEO_CODEC = "libx264"  # H.264 in .mp4 plays everywhere; masks lose a little (use PNG frames for exact values)
VIDEO_QUALITY = 18  # x264's constant rate factor: 0 lossless, 18 visually lossless, 23 its default


def require_av():
  """PyAV, or a one-line error naming the extra that installs it."""
  try:
    import av
  except ModuleNotFoundError as e:
    raise ModuleNotFoundError(
      f"video files need PyAV, the optional 'video' dependencies: {install_hint('video')}", name="av"
    ) from e
  return av


def is_video_file(path: str | Path) -> bool:
  return Path(path).suffix.lower() in VIDEO_SUFFIXES


def natural_key(name: str):
  """Sort key that puts frame_2 before frame_10."""
  return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


@dataclasses.dataclass
class Frames:
  """A stream of uint8 HxWx3 frames with what is known of it up front."""

  frames: Iterator[np.ndarray]
  fps: float | None  # None for a folder of frames
  count: int | None  # None when the container does not say
  names: list[str] | None = None  # each frame's stem, for a folder of frames


def frame_files(directory: str | Path) -> list[Path]:
  """The image files of a folder, in natural name order (frame_2 before frame_10)."""
  directory = Path(directory)
  if not directory.is_dir():
    raise FileNotFoundError(f"frames folder not found: {directory}")
  files = sorted(
    (p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in preprocess.IMAGE_SUFFIXES),
    key=lambda p: natural_key(p.name),
  )
  if not files:
    raise ValueError(f"no frames ({', '.join(sorted(preprocess.IMAGE_SUFFIXES))}) in {directory}")
  stems = collections.Counter(p.stem for p in files)
  if len(stems) < len(files):  # outputs are named by stem: f1.png and f1.jpg would write one file
    twice = sorted(p.name for p in files if stems[p.stem] > 1)
    raise ValueError(f"frames in {directory} share a name but not an extension: {twice[:4]}")
  return files


def open_frames(source: str | Path) -> Frames:
  """A video file (PyAV) or a folder of image frames (natural name order) as a stream of RGB frames."""
  source = Path(source)
  if source.is_dir():
    files = frame_files(source)

    def read():
      for f in files:
        yield np.asarray(preprocess.load_image(f))

    return Frames(read(), None, len(files), [f.stem for f in files])
  if not source.is_file():
    raise FileNotFoundError(f"video not found: {source}")
  av = require_av()
  try:
    container = av.open(str(source))
  except av.error.FFmpegError as e:
    raise ValueError(f"cannot read {source} as a video: {e}") from e
  if not container.streams.video:
    container.close()
    raise ValueError(f"{source} has no video stream")
  stream = container.streams.video[0]
  stream.thread_type = "AUTO"  # decode on FFmpeg's threads
  fps = float(stream.average_rate) if stream.average_rate else None

  # Frames beyond preprocess.MAX_SIDE are decoded downscaled, as images are (8K video: GBs per batch else).
  w, h = stream.codec_context.width, stream.codec_context.height
  scale = min(1.0, preprocess.MAX_SIDE / max(w, h, 1))
  size = {"width": max(1, round(w * scale)), "height": max(1, round(h * scale))} if scale < 1 else {}
  if size:
    warnings.warn(f"{source.name}: {w}x{h} frames are read at {size['width']}x{size['height']}", stacklevel=2)

  def read():
    try:
      for frame in container.decode(stream):
        yield frame.reformat(format="rgb24", **size).to_ndarray()
    except av.error.FFmpegError as e:
      raise ValueError(f"cannot decode {source}: {e}") from e
    finally:
      container.close()

  return Frames(read(), fps, stream.frames or None)


class Ema:
  """The exponential moving average of a stream of maps, one at a time: s_0 = p_0,
  s_t = alpha * p_t + (1 - alpha) * s_(t-1)."""

  def __init__(self, alpha: float):
    check_alpha(alpha)
    self.alpha, self.state = alpha, None

  def __call__(self, p: np.ndarray) -> np.ndarray:
    self.state = p if self.state is None else self.alpha * p + (1 - self.alpha) * self.state
    return self.state


def ema(maps: Iterable[np.ndarray], alpha: float) -> Iterator[np.ndarray]:
  """`Ema` over a whole stream."""
  step = Ema(alpha)
  return (step(p) for p in maps)


def check_alpha(alpha: float):
  if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < alpha <= 1.0:
    raise ValueError(f"the smoothing weight alpha must be in (0, 1] (1: no smoothing), got {alpha!r}")


def segment_frames(
  model,
  frames: Iterable,
  prompts: Sequence | None = None,
  *,
  cond=None,
  batch_size: int = BATCH_SIZE,
  smooth: float | None = None,
  image_size: int | None = None,
  threshold: float | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(frame, maps [P, H, W]) per frame, in order: probabilities (bool masks with `threshold`, taken
  after smoothing) at the frame's size. The prompts are encoded once (or pass their embeddings as
  `cond` [P, E]); `batch_size` frames share a vision-tower call, and the next batch is dispatched
  before the current one is handed out, so reading and writing overlap the model's work.
  `smooth`: the EMA weight alpha of the current frame (module docstring); `image_size`: the side the
  model sees (default the model's own)."""
  if (prompts is None) == (cond is None):
    raise ValueError("pass either prompts or their embeddings (cond)")
  preprocess.check_batch_size(batch_size)
  if smooth is not None:
    check_alpha(smooth)
  preprocess.check_threshold(threshold)
  patch = model.config.vision_config.patch_size
  if image_size is not None and (not isinstance(image_size, int) or image_size < patch or image_size % patch):
    raise ValueError(f"image_size must be a positive multiple of the patch size {patch}, got {image_size!r}")
  if cond is None:
    cond = model.encode_prompts(list(prompts))
  return _segment_stream(model, frames, cond, batch_size, smooth, image_size or model.image_size, threshold)


def _segment_stream(model, frames, cond, batch_size, smooth, size, threshold):
  """`segment_frames` after its checks (a generator runs nothing before the first frame is asked for)."""
  smoother = Ema(smooth) if smooth is not None else None

  def dispatch(batch):
    rgb = [np.asarray(preprocess.to_rgb(f)) for f in batch]
    reduced = model.encode_images(preprocess.batch_pixels(rgb, size))
    return rgb, model.decode(reduced, cond)  # jax dispatch is asynchronous: this returns at once

  def finish(dispatched):  # the host side of one batch: sigmoid, smoothing, resize, threshold
    rgb, logits = dispatched
    for frame, p in zip(rgb, preprocess.sigmoid(np.asarray(logits, np.float32))):  # p: [P, S, S]
      p = smoother(p) if smoother is not None else p
      maps = preprocess.resize_map(p, frame.shape[0], frame.shape[1])
      yield frame, (maps > threshold if threshold is not None else maps)

  pending = None
  for batch in preprocess.chunks(frames, batch_size):
    current, pending = pending, dispatch(batch)
    if current is not None:
      yield from finish(current)
  if pending is not None:
    yield from finish(pending)


# ---- writing --------------------------------------------------------------------------------------


class VideoWriter:
  """An H.264 .mp4 written frame by frame (RGB or greyscale uint8). 4:2:0 video needs even sides: an
  odd-sized frame gains a copy of its last row/column."""

  def __init__(self, path: str | Path, fps: float, quality: int = VIDEO_QUALITY):
    self.av = require_av()
    self.path, self.fps, self.quality = Path(path), fps, quality
    self.container = self.stream = None

  def write(self, frame: np.ndarray):
    frame = np.asarray(frame, np.uint8)
    h, w = frame.shape[:2]
    pad = ((0, h % 2), (0, w % 2)) + (((0, 0),) if frame.ndim == 3 else ())
    frame = np.pad(frame, pad, mode="edge")
    if self.container is not None and (frame.shape[1], frame.shape[0]) != (self.stream.width, self.stream.height):
      raise ValueError(
        f"{self.path.name}: a frame of {w}x{h} after frames of {self.stream.width}x{self.stream.height}: a video has "
        "one size (write PNG frames instead)"
      )
    if self.container is None:
      self.container = self.av.open(str(self.path), mode="w")
      rate = Fraction(self.fps).limit_denominator(1001)
      self.stream = self.container.add_stream(VIDEO_CODEC, rate=rate)
      self.stream.width, self.stream.height = frame.shape[1], frame.shape[0]
      self.stream.pix_fmt = "yuv420p"
      self.stream.options = {"crf": str(self.quality)}
    kind = "rgb24" if frame.ndim == 3 else "gray"
    for packet in self.stream.encode(self.av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format=kind)):
      self.container.mux(packet)

  def close(self):
    if self.container is not None:
      for packet in self.stream.encode():  # flush the encoder's delayed frames
        self.container.mux(packet)
      self.container.close()


class PngWriter:
  """One PNG per frame in a folder, named by the frame's name. `replace`: remove the PNGs an earlier run
  left there first (a shorter video would otherwise leave its predecessor's last frames behind)."""

  def __init__(self, directory: str | Path, replace: bool = False):
    self.directory = Path(directory)
    self.directory.mkdir(parents=True, exist_ok=True)
    if replace:
      for old in self.directory.glob("*.png"):
        old.unlink()

  def write(self, frame: np.ndarray, name: str):
    Image.fromarray(np.asarray(frame, np.uint8)).save(self.directory / f"{name}.png")

  def close(self):
    pass


def output_paths(out: str | Path, stem: str, labels: Sequence[str], kinds: Sequence[str]) -> list[Path]:
  """What `write_outputs` creates: per prompt a mask (`STEM_i_SLUG_mask`) and one overlay of all prompts
  (`STEM_overlay`), each an .mp4 (kind "video") and/or a folder of PNGs (kind "png")."""
  out = Path(out)
  names = [f"{stem}_{i}_{visualize.slug(label)}_mask" for i, label in enumerate(labels)] + [f"{stem}_overlay"]
  return [out / (n + ".mp4" if kind == "video" else n) for kind in kinds for n in names]


def refuse_existing(paths: Sequence[Path]):
  """FileExistsError naming the first video or non-empty PNG folder among `output_paths` that an earlier
  run left (checked before any work, so nothing is overwritten unasked)."""
  for p in paths:
    if p.is_file() or (p.is_dir() and any(p.iterdir())):
      raise FileExistsError(
        f"{p} already exists (from an earlier run?): pass --overwrite to replace it, or choose another --out"
      )


def write_outputs(
  results: Iterable[tuple[np.ndarray, np.ndarray]],
  out: str | Path,
  stem: str,
  labels: Sequence[str],
  *,
  kinds: Sequence[str] = ("video",),
  fps: float = DEFAULT_FPS,
  names: Sequence[str] | None = None,
  progress: Any = None,
  overwrite: bool = False,
) -> int:
  """Write `segment_frames`' results: per prompt a greyscale mask and one overlay of all prompts (colours
  picked on the first frame and kept, so they do not flicker), as .mp4 videos and/or PNG folders
  (`output_paths`). PNG frames are named by `names` (a folder's frame stems) or numbered. Returns the
  number of frames; `progress` (a tqdm bar, say) is updated per frame. Outputs left by an earlier run are
  refused (`refuse_existing`) unless `overwrite`, which replaces them whole."""
  kinds = list(kinds)
  if not kinds or any(k not in ("video", "png") for k in kinds):
    raise ValueError(f"output kinds are 'video' and 'png', got {kinds!r}")
  paths = output_paths(out, stem, labels, kinds)
  if not overwrite:
    refuse_existing(paths)
  Path(out).mkdir(parents=True, exist_ok=True)
  per_kind = len(labels) + 1
  writers = [
    VideoWriter(p, fps) if kind == "video" else PngWriter(p, replace=overwrite)
    for k, kind in enumerate(kinds)
    for p in paths[k * per_kind : (k + 1) * per_kind]
  ]
  colors, count = None, 0
  try:
    for count, (frame, maps) in enumerate(results, 1):
      maps = np.asarray(maps, np.float32)
      if colors is None:
        colors = visualize.contrast_colors(frame.astype(np.float32), maps)
      pictures = [np.asarray(visualize.mask_image(m)) for m in maps]
      pictures.append(np.asarray(visualize.overlay(frame, maps, labels, colors)))
      name = names[count - 1] if names is not None else f"{count - 1:06d}"
      for w, picture in zip(writers, pictures * len(kinds)):
        w.write(picture) if isinstance(w, VideoWriter) else w.write(picture, name)
      if progress is not None:
        progress.update(1)
  finally:
    for w in writers:
      w.close()
  return count
