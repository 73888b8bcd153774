"""Serve a web page to segment an uploaded image with typed prompts; the model stays warm.

Example: clipseg-jax serve --checkpoint CIDAS/clipseg-rd64-refined --port 7860, then open
http://127.0.0.1:7860 in a browser. Every resource a client can spend is bounded: see
`clipseg_jax.web.limits.ServerLimits` (a --flag for each of its fields).
"""

from __future__ import annotations

from clipseg_jax.cli.limits import add_limit_flags, limits_from_args
from clipseg_jax.weights.io import DEFAULT_CHECKPOINT


def add_arguments(p):
  p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="anything load_model takes")
  p.add_argument("--clip", default=None, help="HF CLIP checkpoint, with an original .pth --checkpoint")
  p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all interfaces)")
  p.add_argument("--port", type=int, default=7860, help="port (0: any free port)")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype")
  p.add_argument(
    "--allow-origin",
    default=None,
    metavar="ORIGIN",
    help="the one origin (scheme://host[:port]) whose pages may call the API (CORS); none by default",
  )
  p.add_argument(
    "--allowed-host",
    action="append",
    default=[],
    metavar="NAME",
    help="another name this server answers to in the Host header (repeatable; 127.0.0.1, localhost and "
    "--host are always accepted): e.g. the machine's name with --host 0.0.0.0",
  )
  from clipseg_jax.web.limits import ServerLimits

  add_limit_flags(p, ServerLimits, "server")


def run(args):
  import jax.numpy as jnp

  from clipseg_jax import load_model
  from clipseg_jax.web.server import ServerLimits, check_address, make_server

  limits = limits_from_args(args, ServerLimits)  # bad limits, ports and origins fail before the model loads
  check_address(args.host, args.port, args.allow_origin)
  model = load_model(args.checkpoint, clip=args.clip, dtype=jnp.dtype(args.dtype))
  server = make_server(
    model,
    str(args.checkpoint),
    args.host,
    args.port,
    limits=limits,
    allow_origin=args.allow_origin,
    extra_hosts=args.allowed_host,
  )
  host, port = server.server_address[:2]
  print(f"serving {args.checkpoint} on http://{host}:{port} (Ctrl-C stops)", flush=True)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.server_close()
