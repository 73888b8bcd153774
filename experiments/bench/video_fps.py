"""Frames per second of the video path (clipseg_jax.video.segment_frames): synthetic 320x240 frames (a
disc crossing a grey field), one set of prompts encoded once, frames batched through the vision tower.

Reported per (side the model sees, batch size): the model alone (maps at the frame's size, nothing
written) and end to end with the outputs written (a mask + overlay per frame, as PNGs and as mp4 where
PyAV is installed). The first batch (compilation) is left out of the timing.

  python -m experiments.bench.video_fps [--checkpoint embedded:synthetic] [--sizes 352 0] [--batches 1 8]
      [--frames 48] [--prompts "a red circle"]    # size 0: the model's own (160 for embedded:synthetic)
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time

import jax
import numpy as np

from clipseg_jax import load_model, video


def frames(n: int, h: int = 240, w: int = 320):
  yy, xx = np.mgrid[:h, :w]
  for t in range(n):
    f = np.full((h, w, 3), 90, np.uint8)
    f[(yy - h // 2) ** 2 + (xx - 40 - (w - 80) * t // max(n - 1, 1)) ** 2 < 40**2] = (220, 30, 30)
    yield f


def rate(model, prompts, n, size, batch, out=None, kinds=("png",)) -> float:
  """Frames per second over all but the first batch (which compiles)."""
  results = video.segment_frames(model, frames(n), prompts, batch_size=batch, image_size=size)
  stamps = []

  class Clock:  # write_outputs' progress hook: a time stamp per frame
    def update(self, _):
      stamps.append(time.perf_counter())

  if out is None:
    for _ in results:
      stamps.append(time.perf_counter())
  else:
    video.write_outputs(results, out, "bench", prompts, kinds=kinds, fps=25, progress=Clock(), overwrite=True)
  timed = stamps[batch - 1 :]  # from the end of the first batch
  return (len(timed) - 1) / (timed[-1] - timed[0])


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--checkpoint", default="embedded:synthetic")
  parser.add_argument("--sizes", type=int, nargs="+", default=[352, 0], help="0: the model's own")
  parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
  parser.add_argument("--frames", type=int, default=48)
  parser.add_argument("--prompts", nargs="+", default=["a red circle"])
  args = parser.parse_args()
  model = load_model(args.checkpoint)
  kinds = ["png", "video"] if importlib.util.find_spec("av") else ["png"]
  device = jax.devices()[0].device_kind
  print(f"{args.checkpoint} on {device}, {args.frames} frames of 320x240, {len(args.prompts)} prompt(s)")
  print(f"{'size':>5} {'batch':>5} {'model frames/s':>15} {'written (' + '+'.join(kinds) + ') frames/s':>26}")
  for size in args.sizes:
    size = size or model.image_size
    for batch in args.batches:
      alone = rate(model, args.prompts, args.frames, size, batch)
      with tempfile.TemporaryDirectory() as tmp:
        written = rate(model, args.prompts, args.frames, size, batch, tmp, kinds)
      print(f"{size:>5} {batch:>5} {alone:>15.1f} {written:>26.1f}")


if __name__ == "__main__":
  main()
