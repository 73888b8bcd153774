"""`clipseg-jax`: one entry point, a sub-command per job."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from clipseg_jax.cli import (
  calibrate,
  convert,
  data,
  demo,
  demo_app,
  evaluate,
  pretrain_clip,
  push,
  segment,
  serve,
  train,
)
from clipseg_jax.project import install_hint

COMMANDS = {
  "segment": segment,
  "calibrate": calibrate,
  "convert": convert,
  "train": train,
  "eval": evaluate,
  "data": data,
  "demo": demo,
  "pretrain-clip": pretrain_clip,
  "serve": serve,
  "push": push,
  "demo-app": demo_app,
}
TAKES_OVERRIDES = ("train", "pretrain-clip")  # these pass --config.KEY[=]VALUE on to config_flags
# Optional dependencies -> the extra that installs them.
EXTRAS = {
  "tensorflow": "data",
  "tensorflow_datasets": "data",
  "grain": "data",
  "array_record": "data",
  "importlib_resources": "data",
  "matplotlib": "data",
  "torch": "torch",
  "tensorboard": "train",
  "gradio": "demo",
  "clu": "train",
  "av": "video",
  "onnx": "onnx",
  "onnxruntime": "onnx",
  "onnxscript": "onnx",
}
# TensorFlow's C++ INFO lines are noise to a user; warnings stay. Its oneDNN banner is printed before its
# logging starts, so only turning oneDNN off silences it (TF only reads and decodes records here: no maths).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# What a user's input or environment can cause; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError)


class QuietNoise(logging.Filter):
  """Drops library chatter that says nothing to a user: TFDS' "Variant folder ... has no
  dataset_info.json" for every unprepared version beside the prepared one and its "Failed to load ...
  from files" for each older version looked for; JAX's note that a TPU backend (libtpu, installed by
  some images) cannot start on a machine without a TPU."""

  NOISE = (
    "Variant folder ",
    "Failed to load %s from files",  # TFDS, while looking for data prepared at an older version
    "Unable to initialize backend 'tpu'",
    "Platform 'tpu' is experimental",
    "A Google TPU may be present on this machine",
  )

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(self.NOISE)


NOISY_LOGGERS = ("absl", "tensorflow_datasets", "jax._src.xla_bridge")


def quiet_noise():
  for name in NOISY_LOGGERS:
    logger = logging.getLogger(name)
    if not any(isinstance(f, QuietNoise) for f in logger.filters):
      logger.addFilter(QuietNoise())


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="clipseg-jax", description=__doc__)
  parser.add_argument("--debug", action="store_true", help="show the full traceback of an error (anywhere on the line)")
  sub = parser.add_subparsers(dest="command", required=True)
  for name, module in COMMANDS.items():
    module.add_arguments(sub.add_parser(name, help=module.__doc__.splitlines()[0], description=module.__doc__))
  return parser


def missing_extra(error: ModuleNotFoundError) -> str | None:
  """The pip extra that provides the module `error` could not import, if it is one of ours."""
  return EXTRAS.get((error.name or "").partition(".")[0])


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  debug = "--debug" in argv  # accepted anywhere, sub-commands included
  parser = build_parser()
  args, rest = parser.parse_known_args([a for a in argv if a != "--debug"])
  args.debug = debug
  quiet_noise()
  if rest and args.command not in TAKES_OVERRIDES:
    parser.error(f"unrecognized arguments: {' '.join(rest)}")
  try:
    if args.command in TAKES_OVERRIDES:
      return COMMANDS[args.command].run(args, rest) or 0
    return COMMANDS[args.command].run(args) or 0
  except ModuleNotFoundError as e:
    extra = missing_extra(e)
    if args.debug or extra is None:
      raise
    print(
      f"clipseg-jax {args.command}: error: this needs the optional '{extra}' dependencies "
      f"(no module {e.name!r}): {install_hint(extra)}",
      file=sys.stderr,
    )
    return 2
  except USER_ERRORS as e:
    if args.debug:
      raise
    print(f"clipseg-jax {args.command}: error: {e} (--debug shows the traceback)", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
