"""`clipseg-jax`: one entry point, a sub-command per job."""

from __future__ import annotations

import argparse
import sys

from clipseg_jax.cli import convert, data, demo, evaluate, segment

COMMANDS = {"segment": segment, "convert": convert, "eval": evaluate, "data": data, "demo": demo}


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="clipseg-jax", description=__doc__)
  sub = parser.add_subparsers(dest="command", required=True)
  for name, module in COMMANDS.items():
    module.add_arguments(sub.add_parser(name, help=module.__doc__.splitlines()[0],
                                        description=module.__doc__))
  return parser


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  try:
    return COMMANDS[args.command].run(args) or 0
  except (ValueError, FileNotFoundError, OSError) as e:
    print(f"clipseg-jax {args.command}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
