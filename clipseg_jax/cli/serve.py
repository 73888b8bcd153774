"""Serve a web page to segment an uploaded image with typed prompts; the model stays warm.

Example: clipseg-jax serve --checkpoint CIDAS/clipseg-rd64-refined --port 7860, then open
http://127.0.0.1:7860 in a browser.
"""

from __future__ import annotations

from clipseg_jax.cli.segment import DEFAULT_CHECKPOINT


def add_arguments(p):
  p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="anything load_model takes")
  p.add_argument("--clip", default=None, help="HF CLIP checkpoint, with an original .pth --checkpoint")
  p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all interfaces)")
  p.add_argument("--port", type=int, default=7860, help="port (0: any free port)")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype")


def run(args):
  import jax.numpy as jnp

  from clipseg_jax import load_model
  from clipseg_jax.web.server import make_server

  model = load_model(args.checkpoint, clip=args.clip, dtype=jnp.dtype(args.dtype))
  server = make_server(model, str(args.checkpoint), args.host, args.port)
  host, port = server.server_address[:2]
  print(f"serving {args.checkpoint} on http://{host}:{port} (Ctrl-C stops)", flush=True)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.server_close()
