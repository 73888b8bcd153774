"""Publish a model on the Hugging Face Hub: HF format (transformers loads it) or Flax, with its model card.

Example: clipseg-jax push out/demo/run my-org/clipseg-synthetic --private
SRC is anything load_model takes (a training workdir, an HF or Flax directory, a hub id, embedded:synthetic).
It is exported with a model card (what it was trained on, its evaluations: SRC/eval/*.json and --eval
reports, the CLIP fingerprint) to a temporary folder, then uploaded in one commit (the repository is
created if missing). Log in first (`hf auth login`) or pass --token.
"""

from __future__ import annotations

from clipseg_jax.export import PUSH_FORMATS


def add_arguments(p):
  p.add_argument("src", help="anything load_model takes: workdir, HF or Flax directory, hub id, embedded:NAME")
  p.add_argument("repo_id", help="the Hub repository, ORG_OR_USER/NAME (created if missing)")
  p.add_argument("--private", action="store_true", help="create the repository private")
  p.add_argument("--revision", default=None, metavar="BRANCH", help="upload to this branch (created if missing)")
  p.add_argument("--format", choices=PUSH_FORMATS, default="hf", help="hf: transformers' layout; flax: clipseg-jax's")
  p.add_argument("--token", default=None, help="a Hub token (default: the one `hf auth login` saved, or $HF_TOKEN)")
  p.add_argument("--commit-message", default=None, metavar="M")
  p.add_argument(
    "--eval",
    action="append",
    default=[],
    metavar="REPORT",
    help="an evaluation report for the card (`clipseg-jax eval`'s TASK.json, or its --out directory); repeatable",
  )
  p.add_argument("--license", default=None, help="the card's license (Hub identifier, e.g. mit, apache-2.0)")
  p.add_argument("--clip", default=None, help="HF CLIP checkpoint, when SRC is an original .pth")


def run(args):
  from clipseg_jax import load_model
  from clipseg_jax.export import read_reports, reports_beside
  from clipseg_jax.weights.hub import check_repo_id

  check_repo_id(args.repo_id)  # a bad name fails before the model loads
  reports = reports_beside(args.src) + read_reports(args.eval)
  model = load_model(args.src, clip=args.clip)
  url = model.push_to_hub(
    args.repo_id,
    format=args.format,
    private=args.private,
    revision=args.revision,
    token=args.token,
    commit_message=args.commit_message,
    evaluation=reports,
    license=args.license,
  )
  print(f"pushed {args.src} ({args.format}) to {args.repo_id}: {url}")
