"""Checkpoint errors that name every offending key."""


class CheckpointMismatchError(ValueError):
  """A checkpoint whose keys or shapes do not fit the model config."""

  def __init__(self, source: str, *, missing=(), unexpected=(), misshaped=()):
    self.missing, self.unexpected, self.misshaped = list(missing), list(unexpected), list(misshaped)
    lines = [f"{source} does not match the model config:"]
    for title, items in (
      ("missing keys", self.missing),
      ("unexpected keys", self.unexpected),
      ("misshaped keys", self.misshaped),
    ):
      if items:
        shown = items[:20] + ([f"... and {len(items) - 20} more"] if len(items) > 20 else [])
        lines.append(f"  {title} ({len(items)}):")
        lines.extend(f"    {x}" for x in shown)
    super().__init__("\n".join(lines))
