"""Command-line flags for a limits dataclass (`ServerLimits`, `AppLimits`): one --flag per field, its
help from the field's metadata, and the dataclass built back from the parsed arguments."""

from __future__ import annotations

import dataclasses


def add_limit_flags(p, limits_type, what: str):
  group = p.add_argument_group(f"limits (what clients can make the {what} spend)")
  for f in dataclasses.fields(limits_type):
    group.add_argument(
      "--" + f.name.replace("_", "-"),
      type=type(f.default),
      default=f.default,
      help=f"{f.metadata['help']} (default: %(default)s)",
    )


def limits_from_args(args, limits_type):
  return limits_type(**{f.name: getattr(args, f.name) for f in dataclasses.fields(limits_type)})
