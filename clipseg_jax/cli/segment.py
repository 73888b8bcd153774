"""Segment images with text or visual prompts; writes a mask PNG and an overlay PNG per (image, prompt).

Example: clipseg-jax segment photos/ --prompt "a cat" --prompt "a sofa" --out masks/ \
           --checkpoint CIDAS/clipseg-rd64-refined
Without --checkpoint it runs offline on the embedded model (`embedded:synthetic`, trained on the built-in
synthetic scenes only: `clipseg-jax segment scene.png --prompt "a red circle" --out masks/`).
Per image it also writes one overlay of all prompts with a legend, and with --logits the raw logits
at the model's resolution (`STEM_logits.npz`: `logits` [P, S, S] and `prompts`). Unreadable images
are reported and skipped; the exit status is then 2.

Output names start with the image's stem (`photo` for `photo.jpg`) where that is unique among the images
given; images whose outputs would share names are told apart by their extension (`x-jpg`, `x-png`), then
by their parent directories (`a_x-jpg`, `b_x-jpg`). Files already in --out are never overwritten: the
command refuses before it writes anything, naming the first such file, unless --overwrite is given.
"""

from __future__ import annotations

import argparse
import collections
import glob
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from clipseg_jax import visualize
from clipseg_jax.preprocess import load_image

# Offline out of the box: the embedded demo model (synthetic scenes only); photos want a released model,
# one argument away (--checkpoint CIDAS/clipseg-rd64-refined).
DEFAULT_CHECKPOINT = "embedded:synthetic"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def add_arguments(p):
  p.add_argument("images", nargs="+", help="image files, directories or glob patterns")
  p.add_argument("--prompt", action="append", default=[], help="a text prompt (repeatable)")
  p.add_argument(
    "--support",
    action="append",
    default=[],
    help="a visual prompt: support image (repeatable, paired with --support-mask)",
  )
  p.add_argument("--support-mask", action="append", default=[], help="mask for the matching --support")
  p.add_argument(
    "--checkpoint",
    default=DEFAULT_CHECKPOINT,
    help="anything load_model takes: hub id, HF dir, clipseg-jax checkpoint, original .pth (default: the "
    "embedded model, offline, for synthetic scenes; photos: CIDAS/clipseg-rd64-refined)",
  )
  p.add_argument("--clip", default=None, help="HF CLIP checkpoint, with an original .pth --checkpoint")
  p.add_argument(
    "--out", default=None, help="output directory (default: a new folder STEM_segments in the current directory)"
  )
  p.add_argument("--threshold", type=float, default=None, help="write binary masks at this probability")
  p.add_argument("--logits", action="store_true", help="also write raw logits (STEM_logits.npz)")
  p.add_argument("--batch-size", type=positive_int, default=4, help="images per vision-tower call")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype")
  p.add_argument("--overwrite", action="store_true", help="replace output files left in --out by an earlier run")


def positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
  return value


def expand_images(specs) -> list[Path]:
  paths = []
  for spec in specs:
    p = Path(spec)
    if p.is_dir():
      paths += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
    elif any(c in spec for c in "*?["):
      matches = sorted(Path(m) for m in glob.glob(spec, recursive=True))
      if not matches:
        raise FileNotFoundError(f"no images match {spec!r}")
      paths += matches
    elif p.exists():
      paths.append(p)
    else:
      raise FileNotFoundError(f"image not found: {spec}")
  if not paths:
    raise FileNotFoundError(f"no images found in {' '.join(specs)}")
  unique = {}  # the same file named twice (a directory and a glob, say) is segmented once
  for p in paths:
    unique.setdefault(p.resolve(), p)
  return list(unique.values())


def output_files(name: str, labels, logits: bool) -> list[str]:
  """The files written for one image whose outputs are named `name`."""
  files = [
    f"{name}_{i}_{visualize.slug(label)}_{kind}.png" for i, label in enumerate(labels) for kind in ("mask", "overlay")
  ]
  files.append(f"{name}_overlay.png")
  if logits:
    files.append(f"{name}_logits.npz")
  return files


def _candidate(path: Path, level: int) -> str:
  """Level 0: the stem; 1: stem and extension; n >= 2: that after the n - 1 innermost parent directories."""
  if level == 0:
    return path.stem
  name = f"{path.stem}-{path.suffix[1:]}" if path.suffix else path.stem
  parents = [q.name for q in path.resolve().parents if q.name][: level - 1]
  return "_".join([*reversed(parents), name])


def output_names(paths, labels, logits: bool = False) -> list[str]:
  """A name per image such that no two images' output files coincide: the stem where that is unique,
  else the stem and extension, else those after as many parent directory names as it takes (all
  deterministic, from the paths alone); a numeric suffix as the last resort."""
  levels = [0] * len(paths)
  max_level = [len(p.resolve().parents) + 1 for p in paths]
  while True:
    names = [_candidate(p, lv) for p, lv in zip(paths, levels)]
    owners = collections.defaultdict(set)
    for i, name in enumerate(names):
      for f in output_files(name, labels, logits):
        owners[f].add(i)
    clash = {i for group in owners.values() if len(group) > 1 for i in group}
    if not clash:
      return names
    if all(levels[i] >= max_level[i] for i in clash):
      break
    for i in clash:
      levels[i] = min(levels[i] + 1, max_level[i])
  # Distinct paths whose full names still clash (`a_b/x` and `a/b_x`): number them in order.
  taken, out = set(), []
  for name in names:
    candidate, k = name, 1
    while any(f in taken for f in output_files(candidate, labels, logits)):
      k += 1
      candidate = f"{name}~{k}"
    taken.update(output_files(candidate, labels, logits))
    out.append(candidate)
  return out


def default_out(spec: str) -> Path:
  """The folder outputs go to without --out: named after the first image (or directory) given."""
  name = Path(spec.rstrip("/\\")).stem if not any(c in spec for c in "*?[") else "images"
  return Path(f"{name or 'images'}_segments")


def run(args):
  import jax.numpy as jnp

  from clipseg_jax import load_model

  if len(args.support) != len(args.support_mask):
    raise ValueError(f"{len(args.support)} --support images but {len(args.support_mask)} --support-mask files")
  prompts = list(args.prompt)
  labels = list(args.prompt)
  for image, mask in zip(args.support, args.support_mask):
    prompts.append((load_image(image), load_image(mask)))
    labels.append(f"support {Path(image).stem}")
  if not prompts:
    raise ValueError("give at least one --prompt (or --support with --support-mask)")
  paths = expand_images(args.images)
  out = Path(args.out) if args.out is not None else default_out(args.images[0])
  names = dict(zip(paths, output_names(paths, labels, args.logits)))
  if not args.overwrite:
    for path in paths:
      for f in output_files(names[path], labels, args.logits):
        if (out / f).exists():
          raise FileExistsError(
            f"{out / f} already exists (from an earlier run?): pass --overwrite to replace it, or choose another --out"
          )
  model = load_model(args.checkpoint, clip=args.clip, dtype=jnp.dtype(args.dtype))
  cond = model.encode_prompts(prompts)
  out.mkdir(parents=True, exist_ok=True)
  loaded, failures = collections.deque(), []

  def images():
    for path in paths:
      try:
        image = load_image(path)
      except ValueError as e:
        failures.append(str(e))
        tqdm.write(f"skipped: {e}", file=sys.stderr)
        continue
      loaded.append((path, image))
      yield image

  bar = tqdm(total=len(paths), desc="segment", unit="image", disable=len(paths) < 2)
  results = model.predict_iter(images(), cond, threshold=args.threshold, batch_size=args.batch_size)
  for done, result in enumerate(results, 1):
    path, image = loaded.popleft()
    name = names[path]
    shown = result["masks"]
    for i, (label, mask) in enumerate(zip(labels, shown)):
      stem = f"{name}_{i}_{visualize.slug(label)}"
      visualize.mask_image(mask).save(out / f"{stem}_mask.png")
      visualize.beside(image, visualize.overlay(image, mask, [label])).save(out / f"{stem}_overlay.png")
    visualize.beside(image, visualize.overlay(image, shown, labels)).save(out / f"{name}_overlay.png")
    if args.logits:
      np.savez_compressed(out / f"{name}_logits.npz", logits=result["logits"], prompts=np.array(labels))
    bar.update(done + len(failures) - bar.n)  # skipped files count as seen
  bar.close()
  done = len(paths) - len(failures)
  print(f"wrote masks and overlays for {done} image(s) x {len(prompts)} prompt(s) to {out}")
  if failures:
    raise ValueError(
      f"{len(failures)} of {len(paths)} image(s) could not be read: {failures[0]}"
      + (" ..." if len(failures) > 1 else "")
    )
