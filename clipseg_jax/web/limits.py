"""What clients of the web front ends can make them spend: the HTTP server's `ServerLimits`, the Gradio
app's `AppLimits` (`clipseg-jax serve` and `clipseg-jax demo-app` have a flag for each field), and `Busy`,
the answer when a limit shared by all clients is reached for now."""

from __future__ import annotations

import dataclasses
import math

from clipseg_jax import visualize

MAX_PIXELS = 40_000_000  # largest image by default (width*height from its header, before decoding)
MAX_PROMPT_CHARS = 300


def check_positive(limits):
  """Every field of a limits dataclass a finite number above zero (NaN and inf refused too), named as
  its command-line flag."""
  for f in dataclasses.fields(limits):
    value = getattr(limits, f.name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
      flag = "--" + f.name.replace("_", "-")
      raise ValueError(f"{type(limits).__name__}.{f.name} must be positive and finite ({flag}), got {value!r}")


class Busy(Exception):
  """A limit shared by all clients (the work queue, the upload budget) is reached: the client may try
  again after `retry_after_s` (over HTTP: a 503 with Retry-After)."""

  def __init__(self, message: str, retry_after_s: int):
    super().__init__(message)
    self.retry_after_s = retry_after_s


@dataclasses.dataclass(frozen=True)
class ServerLimits:
  """What one client (and all of them together) can make the HTTP server spend."""

  max_request_bytes: int = dataclasses.field(
    default=40 << 20, metadata={"help": "largest POST body (Content-Length, checked before reading)"}
  )
  max_pixels: int = dataclasses.field(
    default=MAX_PIXELS, metadata={"help": "largest image (width*height from its header, before decoding)"}
  )
  max_side: int = dataclasses.field(
    default=2048,
    metadata={
      "help": "images are downscaled to this longer side (at most preprocess.MAX_SIDE) before the model "
      "and drawing; the overlay and masks come at that size"
    },
  )
  max_prompts: int = dataclasses.field(default=len(visualize.PALETTE), metadata={"help": "prompts per request"})
  max_prompt_chars: int = dataclasses.field(default=MAX_PROMPT_CHARS, metadata={"help": "characters per prompt"})
  max_instances: int = dataclasses.field(
    default=64, metadata={"help": "instances listed per prompt when a request asks for them (highest scores first)"}
  )
  max_connections: int = dataclasses.field(
    default=32, metadata={"help": "connections handled at once (one thread each); more get a 503"}
  )
  max_body_bytes_in_flight: int = dataclasses.field(
    default=160 << 20, metadata={"help": "request bodies held in memory at once, all connections together"}
  )
  workers: int = dataclasses.field(
    default=2, metadata={"help": "threads doing image work (decode, model, drawing); model calls one at a time"}
  )
  queue_size: int = dataclasses.field(
    default=8, metadata={"help": "requests waiting for a worker; more get a 503 with Retry-After"}
  )
  socket_timeout_s: float = dataclasses.field(
    default=10.0, metadata={"help": "a client silent this long (reading or writing) is dropped"}
  )
  read_timeout_s: float = dataclasses.field(
    default=30.0, metadata={"help": "the whole request (line, headers, body) must arrive within this"}
  )
  retry_after_s: int = dataclasses.field(default=5, metadata={"help": "Retry-After of a 503"})
  min_upload_bytes_per_s: int = dataclasses.field(
    default=16 << 10,
    metadata={"help": "an upload slower than this on average (after --socket-timeout-s) is dropped with a 408"},
  )

  def __post_init__(self):
    check_positive(self)


@dataclasses.dataclass(frozen=True)
class AppLimits:
  """What clients can make the Gradio app spend."""

  max_upload_bytes: int = dataclasses.field(default=20 << 20, metadata={"help": "largest uploaded file (bytes)"})
  max_pixels: int = dataclasses.field(
    default=MAX_PIXELS, metadata={"help": "largest query image (width*height from its header, before decoding)"}
  )
  max_side: int = dataclasses.field(
    default=1024, metadata={"help": "query and support images are downscaled to this longer side first"}
  )
  max_prompts: int = dataclasses.field(
    default=len(visualize.PALETTE), metadata={"help": "prompts per request (text and visual together)"}
  )
  max_prompt_chars: int = dataclasses.field(default=MAX_PROMPT_CHARS, metadata={"help": "characters per text prompt"})
  queue_size: int = dataclasses.field(default=16, metadata={"help": "requests waiting in gradio's queue"})
  concurrency: int = dataclasses.field(default=1, metadata={"help": "requests processed at once"})

  def __post_init__(self):
    check_positive(self)
