"""`clipseg-jax`: one entry point, a sub-command per job."""

from __future__ import annotations

import argparse
import sys

from clipseg_jax.cli import convert, data, demo, evaluate, pretrain_clip, segment, serve, train

COMMANDS = {"segment": segment, "convert": convert, "train": train, "eval": evaluate, "data": data,
            "demo": demo, "pretrain-clip": pretrain_clip, "serve": serve}
TAKES_OVERRIDES = ("train", "pretrain-clip")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="clipseg-jax", description=__doc__)
  sub = parser.add_subparsers(dest="command", required=True)
  for name, module in COMMANDS.items():
    module.add_arguments(sub.add_parser(name, help=module.__doc__.splitlines()[0],
                                        description=module.__doc__))
  return parser


def main(argv=None) -> int:
  args, rest = build_parser().parse_known_args(argv)
  overrides = [a for a in rest if a.startswith("--config.")]
  if rest and (args.command not in TAKES_OVERRIDES or len(overrides) != len(rest)):
    build_parser().error(f"unrecognized arguments: {' '.join(rest)}")
  try:
    if args.command in TAKES_OVERRIDES:
      return COMMANDS[args.command].run(args, overrides) or 0
    return COMMANDS[args.command].run(args) or 0
  except (ValueError, FileNotFoundError, OSError) as e:
    print(f"clipseg-jax {args.command}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
