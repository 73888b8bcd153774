"""Train the decoder on a frozen CLIP: clipseg-jax train --config FILE --workdir DIR [--config.KEY=VALUE ...]

Rerunning the same command on a workdir resumes it. Multi-host: the platform's own detection on TPU
pods and SLURM (--distributed auto), or --coordinator HOST:PORT --num-processes N --process-id I.
"""

from __future__ import annotations


def add_arguments(p):
  p.add_argument(
    "--config", required=True, help="a recipe name (synthetic, rd64_uni, ...) or a config file; then --config.KEY=VALUE"
  )
  p.add_argument("--workdir", required=True)
  p.add_argument("--coordinator", default=None, help="HOST:PORT of process 0 (multi-process runs)")
  p.add_argument("--num-processes", type=int, default=None)
  p.add_argument("--process-id", type=int, default=None)
  p.add_argument(
    "--distributed",
    choices=["off", "auto"],
    default="off",
    help="auto: jax.distributed.initialize() with the platform's detection (TPU, SLURM)",
  )
  p.add_argument("--cpu-devices", type=int, default=None, help="simulate N CPU devices (testing)")


def initialize_distributed(args):
  import jax

  if args.coordinator:
    if args.num_processes is None or args.process_id is None:
      raise ValueError("--coordinator needs --num-processes and --process-id")
    # CPU collectives across processes (affects CPU devices only; asking for the backend here would
    # initialise it before jax.distributed may).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  elif args.distributed == "auto":
    jax.distributed.initialize()


def run(args, overrides=()):
  import logging
  import os

  if args.cpu_devices:
    os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={args.cpu_devices}"
    )
  from clipseg_jax.train.recipes import load_config

  cfg = load_config(args.config, overrides)  # unknown keys fail here, before any compute
  initialize_distributed(args)
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  from absl import logging as absl_logging

  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax narrates every save at INFO
  from clipseg_jax.train.trainer import train

  metrics = train(cfg, args.workdir)
  import jax

  if jax.process_index() == 0:
    shown = (f"{k}={v}" if isinstance(v, int) else f"{k}={v:.4g}" for k, v in metrics.items())
    print("final: " + ", ".join(shown))
