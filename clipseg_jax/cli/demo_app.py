"""Serve the Gradio app: text prompts, visual prompts painted on a support image, both mixed.

Example: clipseg-jax demo-app (the embedded model, offline), or clipseg-jax demo-app --checkpoint
CIDAS/clipseg-rd64-refined --host 0.0.0.0 --share. Needs the optional extra: pip install
'clipseg-jax[demo]'. What clients can spend is bounded: see `clipseg_jax.web.limits.AppLimits`
(a --flag for each of its fields).
"""

from __future__ import annotations

import argparse

from clipseg_jax.cli.limits import add_limit_flags, limits_from_args

DEFAULT_PORT = 7860


def add_arguments(p):
  # The app module imports gradio only when the app is built, so --help works without the extra.
  from clipseg_jax.web.limits import AppLimits
  from clipseg_jax.weights.io import DEFAULT_CHECKPOINT

  p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="anything load_model takes (default: %(default)s)")
  p.add_argument("--clip", default=None, help="HF CLIP checkpoint, with an original .pth --checkpoint")
  p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all interfaces)")
  p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default: %(default)s)")
  p.add_argument(
    "--share",
    action=argparse.BooleanOptionalAction,
    default=None,
    help="a public gradio.live link (default: on in Colab only)",
  )
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype")
  add_limit_flags(p, AppLimits, "app")


def app_limits(args):
  from clipseg_jax.web.limits import AppLimits

  return limits_from_args(args, AppLimits)


def run(args):
  import gradio  # noqa: F401  (fail here, before the model loads, when the [demo] extra is missing)
  import jax.numpy as jnp

  from clipseg_jax.web.gradio_app import launch
  from clipseg_jax.web.server import check_address

  limits = app_limits(args)  # bad limits and ports fail before the model loads
  check_address(args.host, args.port)
  print(f"loading {args.checkpoint} ...", flush=True)
  launch(
    checkpoint=args.checkpoint,
    clip=args.clip,
    dtype=jnp.dtype(args.dtype),
    host=args.host,
    port=args.port,
    share=args.share,
    limits=limits,
  )
