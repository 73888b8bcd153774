"""`clipseg-jax segment` on a video file or, with --frames, a folder of frames (one video, in name order).

Example: clipseg-jax segment clip.mp4 --prompt "a red circle" --smooth 0.5 --out masks/
writes per prompt a mask video (masks/clip_0_a-red-circle_mask.mp4) and one overlay video of all prompts
(masks/clip_overlay.mp4); --write png (the default for a frames folder) writes the same as folders of PNG
frames, named as the source frames (lossless: H.264 video changes mask values by a few levels). The
prompts are encoded once; --batch-size frames go through the vision tower together. --smooth ALPHA
averages each map over time (s_t = ALPHA * p_t + (1 - ALPHA) * s_(t-1); clipseg_jax.video). Video files
need the optional `video` extra (PyAV); a folder of frames written as PNGs needs nothing more.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tqdm import tqdm

from clipseg_jax.preprocess import load_image

VIDEO_ONLY = ("smooth", "write", "fps", "image_size")  # the options below that only a video run takes


def add_arguments(p):
  """The video options of `segment` (its own options, prompts to --overwrite, apply as they are)."""
  g = p.add_argument_group("videos (a video file, or a folder of frames with --frames)")
  g.add_argument("--frames", action="store_true", help="treat the one folder given as the frames of a video")
  g.add_argument(
    "--smooth",
    type=alpha,
    default=None,
    metavar="ALPHA",
    help="average the maps over time: the weight of the current frame, in (0, 1] (0.5: about 3 frames)",
  )
  g.add_argument(
    "--write",
    choices=("video", "png", "both"),
    default=None,
    help="mp4 videos, folders of PNG frames, or both (default: video for a video file, png for --frames)",
  )
  g.add_argument("--fps", type=float, default=None, help="frame rate of the videos written (default: the input's)")
  g.add_argument("--image-size", type=int, default=None, help="the side the model sees (default: the model's own)")


def alpha(text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
  if not 0.0 < value <= 1.0:
    raise argparse.ArgumentTypeError(f"must be in (0, 1] (1: no smoothing), got {value}")
  return value


def wanted(args) -> bool:
  """Whether `segment`'s arguments ask for a video run: a video file, or --frames."""
  from clipseg_jax.video import is_video_file

  videos = [s for s in args.images if is_video_file(s)]
  if videos or args.frames:
    if len(args.images) != 1:
      what = "video file" if videos else "frames folder"
      raise ValueError(f"give one {what} at a time (got {len(args.images)} inputs: {' '.join(args.images)})")
    return True
  if given := [f"--{k.replace('_', '-')}" for k in VIDEO_ONLY if getattr(args, k, None) is not None]:
    raise ValueError(f"{', '.join(given)}: only for a video file or a folder given with --frames")
  return False


def run(args):
  import jax.numpy as jnp

  from clipseg_jax import load_model, video

  source = Path(args.images[0])
  if args.frames and not source.is_dir():
    raise FileNotFoundError(f"--frames takes a folder of frames: {source} is not one")
  image_only = {
    "--logits": args.logits,
    "--label-map": getattr(args, "label_map", False),
    "--instances": getattr(args, "instances", False),
    "--thresholds": getattr(args, "thresholds", None),
    "--min-area": getattr(args, "min_area", 0),
    "--fill-holes": getattr(args, "fill_holes", False),
    "--erode": getattr(args, "erode", 0),
    "--dilate": getattr(args, "dilate", 0),
    "--feather": getattr(args, "feather", 0.0),
  }
  if given := [k for k, v in image_only.items() if v]:
    raise ValueError(f"{', '.join(given)}: for images only; a video run writes masks and overlays (--threshold)")
  if expressions := [p for p in args.prompt if p.lstrip()[:1] in ("'", '"', "(", "$")]:
    raise ValueError(f"prompt expressions are for images only; a video takes plain prompts (got {expressions[0]})")
  if args.fps is not None and not args.fps > 0:
    raise ValueError(f"--fps must be positive, got {args.fps}")
  if len(args.support) != len(args.support_mask):
    raise ValueError(f"{len(args.support)} --support images but {len(args.support_mask)} --support-mask files")
  prompts, labels = list(args.prompt), list(args.prompt)
  for image, mask in zip(args.support, args.support_mask):
    prompts.append((load_image(image), load_image(mask)))
    labels.append(f"support {Path(image).stem}")
  if not prompts:
    raise ValueError("give at least one --prompt (or --support with --support-mask)")
  write = args.write or ("video" if source.is_file() else "png")
  kinds = ["video", "png"] if write == "both" else [write]
  if "video" in kinds or source.is_file():
    video.require_av()  # before any work
  stem = source.stem if source.is_file() else source.resolve().name
  out = Path(args.out) if args.out is not None else Path(f"{stem or 'video'}_segments")
  if not args.overwrite:
    video.refuse_existing(video.output_paths(out, stem, labels, kinds))
  frames = video.open_frames(source)
  model = load_model(args.checkpoint, clip=args.clip, dtype=jnp.dtype(args.dtype))
  results = video.segment_frames(
    model,
    frames.frames,
    prompts,
    batch_size=args.batch_size,
    smooth=args.smooth,
    image_size=args.image_size,
    threshold=args.threshold,
  )
  start = time.perf_counter()
  with tqdm(total=frames.count, desc="segment", unit="frame") as bar:
    count = video.write_outputs(
      results,
      out,
      stem,
      labels,
      kinds=kinds,
      fps=args.fps or frames.fps or video.DEFAULT_FPS,
      names=frames.names,
      progress=bar,
      overwrite=args.overwrite,
    )
  rate = count / max(time.perf_counter() - start, 1e-9)
  print(f"wrote masks and overlays of {count} frame(s) x {len(prompts)} prompt(s) to {out} ({rate:.1f} frames/s)")
