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

A --prompt that starts with a quote, `(` or `$` is a prompt expression (clipseg_jax.algebra): `"head" - "ear"`,
`"a cat" | "a dog"`, `("a" | "b") & "c"`; visual prompts are its operands `$support1`, `$support2`, ... (in
the order of --support). --label-map writes STEM_labels.png (a palette PNG: 0 background, i = prompt i),
STEM_labels_legend.json and STEM_labels_overlay.png; --instances writes each connected component as
STEM_I_PROMPT_instanceK.png and their boxes, areas and scores in STEM_instances.json. --min-area, --fill-holes,
--erode, --dilate and --feather clean the masks written (clipseg_jax.instances); thresholds: --thresholds
(per prompt, e.g. from `clipseg-jax calibrate`), else --threshold, else 0.5.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import re
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from clipseg_jax import algebra, labelmap, preprocess, visualize
from clipseg_jax import instances as instance_lib
from clipseg_jax.cli import segment_video
from clipseg_jax.preprocess import load_image
from clipseg_jax.weights.io import DEFAULT_CHECKPOINT


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
  g = p.add_argument_group("expressions, label maps, instances and clean masks")
  g.add_argument(
    "--logic",
    choices=algebra.LOGICS,
    default=algebra.DEFAULT_LOGIC,
    help="how expressions combine probabilities: fuzzy (max/min) or product (1-(1-p)(1-q), pq, p(1-q))",
  )
  g.add_argument("--label-map", action="store_true", help="also write one label map of all prompts (palette PNG)")
  g.add_argument(
    "--thresholds",
    default=None,
    help="per-prompt thresholds: a number, a comma list (one per prompt) or a JSON file from `calibrate`",
  )
  g.add_argument("--instances", action="store_true", help="also write each connected component (PNG + JSON)")
  g.add_argument("--min-area", type=non_negative_int, default=0, help="drop components under this many pixels")
  g.add_argument("--fill-holes", action="store_true", help="fill holes inside masks")
  g.add_argument("--erode", type=non_negative_int, default=0, help="shrink masks by a disk of this radius (pixels)")
  g.add_argument("--dilate", type=non_negative_int, default=0, help="grow masks by a disk of this radius (pixels)")
  g.add_argument("--feather", type=float, default=0.0, help="soft mask edges: Gaussian sigma in pixels")
  segment_video.add_arguments(p)  # a video file or a folder of frames (--frames): cli/segment_video.py


def positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
  return value


def non_negative_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
  if value < 0:
    raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
  return value


def cleaning(args) -> dict:
  """The clean-mask options given (`instances.clean_mask` keywords); empty when none is."""
  options = dict(min_area=args.min_area, fill_holes=args.fill_holes, erode=args.erode, dilate=args.dilate)
  options = {k: v for k, v in options.items() if v}
  if args.feather:
    options["feather"] = args.feather
  return options


def extra_files(args) -> tuple[str, ...]:
  """Per-image files beyond the masks and overlays (suffixes after `NAME_`)."""
  extra = ("labels.png", "labels_legend.json", "labels_overlay.png") if args.label_map else ()
  return extra + (("instances.json",) if args.instances else ())


def expand_images(specs) -> list[Path]:
  paths = []
  for spec in specs:
    p = Path(spec)
    if p.is_dir():
      paths += sorted(q for q in p.iterdir() if q.suffix.lower() in preprocess.IMAGE_SUFFIXES)
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


def output_files(name: str, labels, logits: bool, extra=()) -> list[str]:
  """The files written for one image whose outputs are named `name` (instance PNGs aside: their number is
  known only after predicting)."""
  files = [
    f"{name}_{i}_{visualize.slug(label)}_{kind}.png" for i, label in enumerate(labels) for kind in ("mask", "overlay")
  ]
  files.append(f"{name}_overlay.png")
  if logits:
    files.append(f"{name}_logits.npz")
  return files + [f"{name}_{suffix}" for suffix in extra]


def _candidate(path: Path, level: int) -> str:
  """Level 0: the stem; 1: stem and extension; n >= 2: that after the n - 1 innermost parent directories."""
  if level == 0:
    return path.stem
  name = f"{path.stem}-{path.suffix[1:]}" if path.suffix else path.stem
  parents = [q.name for q in path.resolve().parents if q.name][: level - 1]
  return "_".join([*reversed(parents), name])


def output_names(paths, labels, logits: bool = False, extra=()) -> list[str]:
  """A name per image such that no two images' output files coincide: the stem where that is unique,
  else the stem and extension, else those after as many parent directory names as it takes (all
  deterministic, from the paths alone); a numeric suffix as the last resort."""
  levels = [0] * len(paths)
  max_level = [len(p.resolve().parents) + 1 for p in paths]
  while True:
    names = [_candidate(p, lv) for p, lv in zip(paths, levels)]
    owners = collections.defaultdict(set)
    for i, name in enumerate(names):
      for f in output_files(name, labels, logits, extra):
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
    while any(f in taken for f in output_files(candidate, labels, logits, extra)):
      k += 1
      candidate = f"{name}~{k}"
    taken.update(output_files(candidate, labels, logits, extra))
    out.append(candidate)
  return out


def default_out(spec: str) -> Path:
  """The folder outputs go to without --out: named after the first image (or directory) given."""
  name = Path(spec.rstrip("/\\")).stem if not any(c in spec for c in "*?[") else "images"
  return Path(f"{name or 'images'}_segments")


def run(args):
  import jax.numpy as jnp

  from clipseg_jax import load_model

  if segment_video.wanted(args):
    return segment_video.run(args)
  if len(args.support) != len(args.support_mask):
    raise ValueError(f"{len(args.support)} --support images but {len(args.support_mask)} --support-mask files")
  prompts = list(args.prompt)
  labels = list(args.prompt)
  operands = {}
  for k, (image, mask) in enumerate(zip(args.support, args.support_mask), 1):
    pair = (load_image(image), load_image(mask))
    prompts.append(pair)
    labels.append(f"support {Path(image).stem}")
    operands[f"support{k}"] = pair
  if not prompts:
    raise ValueError("give at least one --prompt (or --support with --support-mask)")
  expressions = any(algebra.is_expression(p) for p in args.prompt)
  program = algebra.compile_expressions(prompts, operands) if expressions else None  # bad syntax: before loading
  preprocess.check_threshold(args.threshold)
  thresholds = labelmap.as_thresholds(
    args.threshold if args.threshold is not None else instance_lib.DEFAULT_THRESHOLD, len(labels)
  )
  if args.thresholds is not None:
    thresholds = labelmap.read_thresholds(args.thresholds, labels)
  clean = cleaning(args)
  clean_options = dict(clean)
  if clean:  # bad options fail before the model loads
    instance_lib.clean_mask(np.zeros((1, 1), np.float32), **clean_options)
  paths = expand_images(args.images)
  out = Path(args.out) if args.out is not None else default_out(args.images[0])
  extra = extra_files(args)
  names = dict(zip(paths, output_names(paths, labels, args.logits, extra)))
  if not args.overwrite:
    for path in paths:
      existing = [out / f for f in output_files(names[path], labels, args.logits, extra)]
      if args.instances:
        existing += instance_files(out, names[path], labels)
      for f in existing:
        if f.exists():
          raise FileExistsError(
            f"{f} already exists (from an earlier run?): pass --overwrite to replace it, or choose another --out"
          )
  model = load_model(args.checkpoint, clip=args.clip, dtype=jnp.dtype(args.dtype))
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
  if expressions:
    results = algebra.predict_expressions_iter(
      model, images(), prompts, operands=operands, logic=args.logic, batch_size=args.batch_size
    )
    leaf_names = [
      p if isinstance(p, str) else labels[next(i for i, q in enumerate(prompts) if q is p)] for p in program.prompts
    ]
  else:
    results = model.predict_iter(images(), model.encode_prompts(prompts), batch_size=args.batch_size)
    leaf_names = labels
  for done, result in enumerate(results, 1):
    path, image = loaded.popleft()
    name = names[path]
    probs = result["masks"]
    if clean:
      shown = np.stack([instance_lib.clean_mask(p, t, **clean_options) for p, t in zip(probs, thresholds)])
    elif args.thresholds is None and args.threshold is not None:
      shown = probs > args.threshold
    elif args.thresholds is not None:
      shown = probs > thresholds[:, None, None]
    else:
      shown = probs
    colors = visualize.contrast_colors(np.asarray(image.convert("RGB"), np.float32), np.asarray(shown, np.float32))
    for i, (label, mask) in enumerate(zip(labels, shown)):
      stem = f"{name}_{i}_{visualize.slug(label)}"
      visualize.mask_image(mask).save(out / f"{stem}_mask.png")
      overlay = visualize.overlay(image, mask, [label], colors=[colors[i]])  # the colour it has in the combined one
      visualize.beside(image, overlay).save(out / f"{stem}_overlay.png")
    visualize.beside(image, visualize.overlay(image, shown, labels, colors=colors)).save(out / f"{name}_overlay.png")
    if args.logits:
      np.savez_compressed(out / f"{name}_logits.npz", logits=result["logits"], prompts=np.array(leaf_names))
    if args.label_map:
      classes = labelmap.label_map(probs, thresholds)
      labelmap.save_label_map(out / f"{name}_labels.png", classes, labels)
      visualize.beside(image, labelmap.label_overlay(image, classes, labels)).save(out / f"{name}_labels_overlay.png")
    if args.instances:
      write_instances(out, name, path, probs, labels, thresholds, clean_options)
    bar.update(done + len(failures) - bar.n)  # skipped files count as seen
  bar.close()
  done = len(paths) - len(failures)
  print(f"wrote masks and overlays for {done} image(s) x {len(prompts)} prompt(s) to {out}")
  if failures:
    raise ValueError(
      f"{len(failures)} of {len(paths)} image(s) could not be read: {failures[0]}"
      + (" ..." if len(failures) > 1 else "")
    )


def instance_files(out: Path, name: str, labels) -> list[Path]:
  """The instance PNGs in `out` that `write_instances` writes for image `name` (from any earlier run)."""
  pattern = re.compile(r"_instance[1-9][0-9]*\.png")
  found = []
  for i, label in enumerate(labels):
    stem = f"{name}_{i}_{visualize.slug(label)}"
    found += [f for f in out.glob(f"{glob.escape(stem)}_instance*.png") if pattern.fullmatch(f.name[len(stem) :])]
  return sorted(found)


def write_instances(out: Path, name: str, path: Path, probs, labels, thresholds, clean_options: dict):
  """Each prompt's connected components as `NAME_I_PROMPT_instanceK.png` (K from 1, highest score first; the
  feathered mask with --feather) and `NAME_instances.json` listing their files, boxes, areas and scores."""
  for old in instance_files(out, name, labels):  # an earlier run's (--overwrite): it may have found more
    old.unlink()
  table = []
  for i, (label, p, t) in enumerate(zip(labels, probs, thresholds)):
    found = instance_lib.instances(p, float(t), **clean_options)
    rows = []
    for k, inst in enumerate(found, 1):
      file = f"{name}_{i}_{visualize.slug(label)}_instance{k}.png"
      visualize.mask_image(inst.soft if inst.soft is not None else inst.mask).save(out / file)
      rows.append({"file": file, **inst.to_dict()})
    table.append({"prompt": label, "threshold": float(t), "instances": rows})
  doc = {"image": str(path), "box_format": "x0, y0, x1, y1 (pixels; x1, y1 exclusive)", "prompts": table}
  (out / f"{name}_instances.json").write_text(json.dumps(doc, indent=2) + "\n")
