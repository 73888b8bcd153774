"""A training run's directory read as a model's parts, without training code (`load_model(WORKDIR)`).

Layout (written by the trainer, `clipseg_jax.train`): `config.json` (the run's recipe), `model/config.json`
(the ClipSegConfig), `model/clipseg_manifest.json` (the manifest; runs started before it have
`model/base.json` instead: the CLIP source and its fingerprint), `model/` tokenizer files, `checkpoints/`
(Orbax steps), `.lock` (while a trainer runs in it)."""

from __future__ import annotations

import json
from pathlib import Path

import jax

from clipseg_jax.config import ClipSegConfig
from clipseg_jax.weights import backbone, freeze_rules, hf, manifest
from clipseg_jax.weights.checkpoints import CheckpointReader

RUN_CONFIG = "config.json"
MODEL_DIR = "model"
BASE = "base.json"  # model/base.json: {"clip": source, "clip_sha256": ..., "clip_trained": [paths]}
CHECKPOINTS = "checkpoints"
FINETUNE_REMEDY = "the decoder does not fit them: retrain in a new workdir"


def read_json(path: Path) -> dict:
  """A workdir's JSON file as a dict, or one error naming it (a damaged or hand-edited file)."""
  try:
    raw = json.loads(path.read_text())
  except FileNotFoundError:
    raise FileNotFoundError(f"{path} is missing: the workdir {path.parent} is incomplete") from None
  except (ValueError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is not valid JSON (damaged?): {e}") from None
  if not isinstance(raw, dict):
    raise ValueError(f"{path} should hold a JSON object, got {type(raw).__name__}")
  return raw


def is_workdir(path: Path) -> bool:
  return path.is_dir() and (path / CHECKPOINTS).is_dir() and (path / MODEL_DIR / BASE).exists()


def check_started(path: Path):
  """A directory with checkpoints but no `model/base.json` is a run that stopped before its setup finished."""
  if (path / CHECKPOINTS).is_dir() and not (path / MODEL_DIR / BASE).is_file():
    raise FileNotFoundError(
      f"{path} looks like a training workdir (it has checkpoints/) but has no model/base.json, which names "
      "its CLIP: the run stopped before its setup finished, or the file was removed; rerun the training "
      "command on it to resume"
    )


def fold_activation_scale(trainable: dict, activation_scale: float) -> dict:
  """Trained params -> the model's own (HF) parameterisation.

  With `model.activation_scale = s` the reduce layers train on s x CLIP's activations: the same
  model with kernel s*W, but with Adam's steps on W a factor s smaller relative to the activations'
  scale. Where CLIP's activations are large (the embedded small CLIP's have std ~3-5), at s = 1 the
  prompt-independent skip inputs added after FiLM drown the conditioned path and the decoder barely
  learns to select the named object (experiments/RESULTS.md, "Recipe history")."""
  if activation_scale == 1.0 or "decoder" not in trainable:
    return trainable
  decoder = {
    name: ({**p, "kernel": p["kernel"] * activation_scale} if name.startswith("reduces_") and "kernel" in p else p)
    for name, p in trainable["decoder"].items()
  }
  return {**trainable, "decoder": decoder}


def initial_decoder(config: ClipSegConfig, seed: int) -> dict:
  """The decoder a run with `seed` starts from (leaves its freeze rules froze keep these values)."""
  from clipseg_jax.models.clipseg import init_params

  return jax.jit(lambda key: init_params(config, key)["decoder"])(jax.random.PRNGKey(seed))


def run_manifest(path: Path, config: ClipSegConfig, run: dict, base: dict) -> manifest.Manifest:
  """The workdir's manifest, or for a run started before manifests, one from its run config and base.json."""
  pcplus = run.get("data", {}).get("pcplus", {})
  return manifest.read_or_derive(
    path / MODEL_DIR,
    config,
    image_size=pcplus.get("image_size"),
    prompt_mode=pcplus.get("prompt_mode"),
    trained_prompts=["text"] + (["visual"] if pcplus.get("visual_prompts") else []),
    withhold_prompt=bool(run.get("model", {}).get("withhold_prompt", False)),
    clip=base.get("clip"),
    clip_sha256=base.get("clip_sha256"),
    clip_finetuned=bool(base.get("clip_trained")),
  )


def training_facts(path: Path, run: dict) -> dict:
  """What a run's recipe says about its model (dataset, steps reached, batch, optimiser, ...), for cards."""
  data, optim = run.get("data", {}), run.get("optim", {})
  pcplus = data.get("pcplus", {})
  steps = (
    [int(p.name) for p in (path / CHECKPOINTS).iterdir() if p.name.isdigit()] if (path / CHECKPOINTS).is_dir() else []
  )
  return {
    "dataset": data.get("name"),
    "split": data.get("train_split"),
    "steps": max(steps, default=None),
    "total_steps": run.get("total_steps"),
    "batch_size": run.get("batch_size"),
    "image_size": pcplus.get("image_size"),
    "prompts": ["text"] + (["visual"] if pcplus.get("visual_prompts") else []),
    "templates": len(pcplus.get("templates", [])) or None,
    "negatives": pcplus.get("q_neg"),
    "optimizer": {k: optim.get(k) for k in ("learning_rate", "end_learning_rate", "warmup_steps", "weight_decay")},
    "seed": run.get("seed"),
  }


def read_base(path: Path) -> dict:
  """A workdir's `base.json` (the CLIP it trained on and its fingerprint), or one error naming the file."""
  base = read_json(path / MODEL_DIR / BASE)
  if not isinstance(base.get("clip"), str):
    raise ValueError(f"{path / MODEL_DIR / BASE} does not name the run's CLIP (damaged?)")
  return base


def read_model(path: Path) -> tuple[ClipSegConfig, dict, manifest.Manifest]:
  """(config, params, manifest) of the latest checkpoint of the run in `path` that restores: its trained
  leaves (the decoder, and any CLIP leaves the freeze rules fine-tuned) over the base CLIP, and the
  decoder's initial values for any leaves it froze."""
  config_path = path / MODEL_DIR / "config.json"
  try:
    config = ClipSegConfig.from_json(config_path)
  except (OSError, ValueError, TypeError, KeyError) as e:
    raise ValueError(f"{config_path} is not a valid model config (damaged?): {e}") from None
  base = read_base(path)
  run = read_json(path / RUN_CONFIG)
  found = run_manifest(path, config, run, base)
  template = hf.param_template(config)
  labels = freeze_rules.labels(template, freeze_rules.rules_of(run.get("optim", {})))
  trainable, frozen = freeze_rules.split(template, labels)
  ckpt = CheckpointReader(path / CHECKPOINTS)
  try:
    if ckpt.latest_step() is None:
      raise FileNotFoundError(f"{path} holds no checkpoint yet")
    # The newest step that restores and matches its digest (a damaged newer one: a warning).
    trained = ckpt.restore_params(trainable)
  finally:
    ckpt.close()
  towers = backbone.model_config_of(base["clip"])
  if towers is not None:
    backbone.check_backbone(backbone.backbone_facts(config), towers, f"the decoder in {path}", base["clip"])
  clip = backbone.clip_params(config, base["clip"])
  backbone.check_fingerprint(path, base["clip"], base.get("clip_sha256"), clip, remedy=FINETUNE_REMEDY)
  params = {"clip": clip}
  if "decoder" in frozen:  # decoder leaves the rules froze keep their initial values (the run's seed)
    params["decoder"] = initial_decoder(config, run.get("seed", 0))
  params = freeze_rules.merge(freeze_rules.split(params, labels)[1], trained)
  params = fold_activation_scale(params, run.get("model", {}).get("activation_scale", 1.0))
  # What the run reached is read now (the manifest was written when it started).
  found = found.replace(provenance={**found.provenance, "training": training_facts(path, run)})
  return config, params, found
