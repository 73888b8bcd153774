"""Prepare datasets: clipseg-jax data build NAME [--manual-dir DIR] [--data-dir DIR].

NAME: synthetic (generated), phrasecut, pascal_voc, coco (read from their original files in
--manual-dir; nothing is downloaded). Append /CONFIG for a builder config, e.g. synthetic/tiny.
"""

from __future__ import annotations

from clipseg_jax.input_pipeline.sources import default_data_dir


def add_arguments(p):
  sub = p.add_subparsers(dest="action", required=True)
  b = sub.add_parser("build", help="prepare a dataset as TFDS array_record files")
  b.add_argument("name", help="synthetic, phrasecut, pascal_voc or coco (optionally NAME/CONFIG)")
  b.add_argument("--manual-dir", default=None, help="the dataset's original files")
  b.add_argument("--data-dir", default=default_data_dir(), help="where prepared datasets live")


def run(args):
  import logging

  from clipseg_jax.input_pipeline import build
  from clipseg_jax.input_pipeline.builders import BUILDERS

  logging.basicConfig(level=logging.INFO, format="%(message)s")
  if args.name.split("/")[0] not in BUILDERS:
    raise ValueError(f"unknown dataset {args.name!r}; choose one of {', '.join(BUILDERS)}")
  builder = build(args.name, data_dir=args.data_dir, manual_dir=args.manual_dir)
  splits = ", ".join(f"{k}: {v.num_examples} records" for k, v in builder.info.splits.items())
  print(f"prepared {args.name} in {builder.data_dir} ({splits})")
