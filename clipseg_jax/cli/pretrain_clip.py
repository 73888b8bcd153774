"""Pretrain the small embedded CLIP contrastively on the synthetic scenes (run once; see README).

clipseg-jax pretrain-clip --config synthetic_clip --workdir DIR [--install]
"""

from __future__ import annotations


def add_arguments(p):
  p.add_argument("--config", required=True)
  p.add_argument("--workdir", required=True)
  p.add_argument(
    "--install", action="store_true", help="copy the result over the embedded CLIP (or the config's export_dir)"
  )


def run(args, overrides=()):
  import shutil
  from pathlib import Path

  from clipseg_jax.train.clip_pretrain import pretrain
  from clipseg_jax.train.recipes import load_config

  cfg = load_config(args.config, overrides)
  summary = pretrain(cfg, args.workdir)
  print(f"pretrained: {summary}; HF CLIP directory in {Path(args.workdir) / 'clip'}")
  if args.install:
    from clipseg_jax.weights.io import EMBEDDED

    target = Path(cfg.export_dir) if cfg.export_dir else EMBEDDED["embedded:synthetic-clip"]
    target.mkdir(parents=True, exist_ok=True)
    for f in (Path(args.workdir) / "clip").iterdir():  # weights, config and tokenizer files
      shutil.copy(f, target / f.name)
    print(f"installed into {target}")
