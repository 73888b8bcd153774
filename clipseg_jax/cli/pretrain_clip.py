"""Pretrain the small embedded CLIP contrastively on the synthetic scenes (run once; see README).

clipseg-jax pretrain-clip --config experiments/configs/synthetic_clip.py --workdir DIR [--install]
"""

from __future__ import annotations


def add_arguments(p):
  p.add_argument("--config", required=True)
  p.add_argument("--workdir", required=True)
  p.add_argument("--install", action="store_true", help="copy the result to the config's export_dir")


def run(args, overrides=()):
  import shutil
  from pathlib import Path

  from clipseg_jax.train.clip_pretrain import pretrain
  from clipseg_jax.train.configs import load_config
  cfg = load_config(args.config, overrides)
  summary = pretrain(cfg, args.workdir)
  print(f"pretrained: {summary}; HF CLIP directory in {Path(args.workdir) / 'clip'}")
  if args.install:
    target = Path(cfg.export_dir)
    target.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors"):
      shutil.copy(Path(args.workdir) / "clip" / name, target / name)
    print(f"installed into {target}")
