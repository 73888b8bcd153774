"""Writing a model: an HF directory (transformers loads it), an original decoder `.pth`, this project's
Flax checkpoint, or a decoder-only directory (the embedded model's format); and publishing one on the
Hub. Plain functions of a model's `config`, `params`, `tokenizer` and `image_size`.

Every directory gets a model card (`README.md`: what the model is, what it was trained on, its
evaluations, the CLIP it needs and that CLIP's fingerprint, how to load it), `preprocessor_config.json`
(the image size and normalisation, as transformers' `CLIPSegProcessor` reads them), the model's manifest
(`clipseg_manifest.json`: what the model is, where it came from; `weights.manifest`) and the evaluation
reports it was given (`eval/TASK.json`). An original decoder file carries its manifest in its sidecar."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import jax

from clipseg_jax import preprocess
from clipseg_jax.weights import backbone, card, hf, hub, io, original
from clipseg_jax.weights.manifest import LEGACY_PROVENANCE, Manifest

FLAX_MARKER = "clipseg_jax.json"  # written beside config.json + params/ by `save`
FLAX_DIGEST_KEY = "params_sha256"  # in FLAX_MARKER: `io.fingerprint` of the params, checked when loading
DECODER_MARKER = "clipseg_jax_decoder.json"  # a decoder-only directory: names its CLIP (`export_decoder`)
DECODER_WEIGHTS = "decoder.safetensors"
PREPROCESSOR_CONFIG = "preprocessor_config.json"
CARD = "README.md"
EVAL_DIR = "eval"  # evaluation reports (`clipseg-jax eval`'s TASK.json) kept with a model
PROVENANCE = LEGACY_PROVENANCE  # where config.json kept provenance before manifests (read when deriving one)
SIDECAR_MANIFEST = "manifest"  # the key of the manifest in an original file's sidecar
PIL_BILINEAR = 2  # PIL.Image.BILINEAR, as `resample` in CIDAS/clipseg-rd64-refined's preprocessor_config.json
PUSH_FORMATS = ("hf", "flax")


def provenance(model) -> dict:
  """What is known of where `model` came from: its manifest's provenance (base_model, license, training)
  and its CLIP's name; empty when nothing was recorded."""
  m = model.manifest
  return {**m.provenance, **({"clip": m.clip} if m.clip else {})}


def preprocessor_config(image_size: int) -> dict:
  """transformers' image processor settings for the model's input: `ViTImageProcessor` as the CIDAS
  repositories have it (bilinear resize to a square, /255, ImageNet mean/std), at `image_size`."""
  return {
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [round(float(m), 6) for m in preprocess.MEAN],
    "image_processor_type": "ViTImageProcessor",
    "image_std": [round(float(s), 6) for s in preprocess.STD],
    "processor_class": "CLIPSegProcessor",
    "resample": PIL_BILINEAR,
    "rescale_factor": 1 / 255,
    "size": {"height": int(image_size), "width": int(image_size)},
  }


def remove_orbax_temporaries(folder: Path, tries: int = 20, pause_s: float = 0.05):
  """Delete the `*.orbax-checkpoint-tmp*` folders a failed Orbax save leaves in `folder` (retried
  briefly: its background threads may still be finishing when the error is raised)."""
  for _ in range(tries):
    left = list(folder.glob("*.orbax-checkpoint-tmp*")) if folder.is_dir() else []
    if not left:
      return
    for tmp in left:
      shutil.rmtree(tmp, ignore_errors=True)
    time.sleep(pause_s)


@contextlib.contextmanager
def writing(out: Path):
  """Any failed write inside (disk full, permissions) as one OSError naming `out`, with the temporary
  folders Orbax leaves behind (`*.orbax-checkpoint-tmp*`) removed."""
  try:
    yield
  except OSError as e:
    remove_orbax_temporaries(Path(out))
    if str(out) in str(e):
      raise
    raise io.write_error(out, e) from e


def write_json(path: Path, obj):
  path.write_text(json.dumps(obj, indent=2) + "\n")


def read_reports(evaluation) -> list[dict]:
  """Evaluation reports from None, a report dict, a `TASK.json` path, a directory of them (or a model
  directory with an `eval/` folder), or a list of these."""
  if evaluation is None:
    return []
  if isinstance(evaluation, dict):
    return [_check_report(evaluation, "evaluation report")]
  if isinstance(evaluation, (list, tuple)):
    return [r for e in evaluation for r in read_reports(e)]
  path = Path(evaluation).expanduser()
  if path.is_dir():
    folder = path / EVAL_DIR if (path / EVAL_DIR).is_dir() else path
    return [_read_report(p) for p in sorted(folder.glob("*.json")) if _is_report(p)]
  if not path.is_file():
    raise FileNotFoundError(f"no such evaluation report: {path}")
  return [_read_report(path)]


def reports_beside(source) -> list[dict]:
  """The reports kept in `SOURCE/eval/` of a local or embedded model (none for hub ids: no download)."""
  s = str(source)
  if s.startswith(io.EMBEDDED_PREFIX):
    folder = io.embedded(s) / EVAL_DIR
  else:
    folder = Path(os.path.expanduser(s)) / EVAL_DIR
  return read_reports(folder) if folder.is_dir() else []


def _is_report(path: Path) -> bool:
  try:
    raw = json.loads(path.read_text())
  except (OSError, ValueError):
    return False
  return isinstance(raw, dict) and "task" in raw and "results" in raw


def _read_report(path: Path) -> dict:
  try:
    raw = json.loads(path.read_text())
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path} is not an evaluation report (not valid JSON: {e})") from None
  return _check_report(raw, str(path))


def _check_report(raw, what: str) -> dict:
  if not (isinstance(raw, dict) and isinstance(raw.get("task"), str) and isinstance(raw.get("results"), dict)):
    raise ValueError(f"{what} is not an evaluation report (`clipseg-jax eval` JSON with 'task' and 'results')")
  return raw


def card_facts(model, fmt: str, *, reports=(), name=None, license=None, clip=None, notes=None) -> dict:
  """What the model card says (`weights.card.card`), from the model and its provenance."""
  prov = provenance(model)
  clip = clip or prov.get("clip")
  embedded_clip = bool(clip) and str(clip).startswith(io.EMBEDDED_PREFIX)
  hub_clip = clip if clip and not embedded_clip and io.is_hub_id(clip) else None
  return {
    "format": fmt,
    "config": model.config.to_dict(),
    "image_size": model.image_size,
    "clip_sha256": io.fingerprint(model.params["clip"]),  # the weights this model holds (fine-tuned ones too)
    "name": name,
    "clip": clip,
    "base_model": prov.get("base_model") or hub_clip,
    "license": license or prov.get("license") or ("mit" if embedded_clip else None),
    "training": prov.get("training"),
    "evaluations": list(reports),
    "notes": list(notes or []),
  }


def manifest_of(model, facts: dict) -> Manifest:
  """The manifest an export writes: the model's, with the CLIP and license its card names."""
  prov = {**model.manifest.provenance, **({"license": facts["license"]} if facts.get("license") else {})}
  return model.manifest.replace(clip=facts["clip"], clip_sha256=facts["clip_sha256"], provenance=prov)


def write_extras(model, out: Path, fmt: str, *, evaluation=None, name=None, license=None, clip=None, notes=None):
  """preprocessor_config.json, the manifest, eval/TASK.json and the model card (README.md) of an export in `out`."""
  reports = read_reports(evaluation)
  for report in reports:
    (out / EVAL_DIR).mkdir(exist_ok=True)
    write_json(out / EVAL_DIR / f"{Path(report['task']).name}.json", report)
  write_json(out / PREPROCESSOR_CONFIG, preprocessor_config(model.image_size))
  facts = card_facts(model, fmt, reports=reports, name=name or str(out), license=license, clip=clip, notes=notes)
  manifest_of(model, facts).write(out)
  (out / CARD).write_text(card.card(facts))


def save_tokenizer(tokenizer, out: Path):
  if tokenizer is not None:
    tokenizer.save_pretrained(str(out))


def export_hf(model, out_dir: str | os.PathLike, *, evaluation=None, name=None, license=None) -> Path:
  """A directory that transformers' `CLIPSegProcessor` + `CLIPSegForImageSegmentation.from_pretrained`
  use as is: `config.json`, `model.safetensors` (bit-identical weights, with a sha256 digest in its
  header that `load_model` checks), tokenizer files, `preprocessor_config.json`, the model card and
  the given evaluation reports. name: the repo id or path the card's snippets load from."""
  if model.config.reduce2_dim is not None:
    raise ValueError("transformers' CLIPSeg has no CLIPDenseBaseline (reduce2_dim); use save()")
  if not model.config.use_decoder_blocks:
    raise ValueError("transformers' CLIPSeg has no decoder without blocks (CLIP-Deconv); use save()")
  if not model.config.hf_compatible:
    raise ValueError(
      f"transformers' CLIPSeg has no refined head with kernels {model.config.transposed_convolution_kernels} "
      "(it builds patch // 4 x patch // 4); use save()"
    )
  out = Path(out_dir)
  with writing(out):
    out.mkdir(parents=True, exist_ok=True)
    io.write_safetensors(hf.to_hf(jax.device_get(model.params)), out / "model.safetensors")
    model.config.to_json(out / "config.json")
    save_tokenizer(model.tokenizer, out)
    write_extras(model, out, "hf", evaluation=evaluation, name=name, license=license)
  return out


def original_sidecar(path: Path) -> Path:
  """`<file>.json` beside an original decoder file: the CLIP it expects (see `export_original`)."""
  return path.with_name(path.name + ".json")


def export_original(model, path: str | os.PathLike) -> Path:
  """The decoder as a state dict in the original `.pth` layout (q/k/v fused), with a `<path>.sha256`
  sidecar that reading checks and a `<path>.json` one naming the CLIP it needs (the file holds the
  decoder only) with that CLIP's fingerprint; `load_model(path)` reads the CLIP's name from it. Refused
  for a model whose CLIP was fine-tuned (the file could not carry it)."""
  if model.manifest.clip_finetuned:
    raise ValueError(
      "this model's CLIP was fine-tuned (optim.freeze_rules), but the original format holds the decoder only "
      "and would be read with the stock CLIP; export it with export_hf or save() (convert --to hf or flax)"
    )
  if model.config.reduce2_dim is not None:
    raise ValueError(
      "the CLIPDenseBaseline (reduce2_dim) has no released file layout to write; export it with save() "
      "(convert --to flax)"
    )
  facts = card_facts(model, "original")
  path = Path(path)
  with writing(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    state = hf.to_hf(jax.device_get(model.params))
    io.write_torch(original.hf_to_original(state, model.original_extras), path)
    _write_original_sidecar(model, path, facts)
  return path


def _write_original_sidecar(model, path: Path, facts: dict):
  write_json(
    original_sidecar(path),
    {
      "format": "CLIPSeg decoder, original code's layout (timojl/clipseg)",
      "contents": "the decoder only: load it with the CLIP below (load_model(path, clip=...))",
      "clip": facts["clip"],
      "clip_sha256": facts["clip_sha256"],
      "extract_layers": list(model.config.extract_layers),
      "image_size": model.image_size,
      "written_by": f"clipseg-jax {card.version()}",
      SIDECAR_MANIFEST: manifest_of(model, facts).to_dict(),
    },
  )


def save(model, out_dir: str | os.PathLike, *, evaluation=None, name=None, license=None) -> Path:
  """This project's Flax checkpoint: `config.json` + Orbax `params/` (+ tokenizer, preprocessor config,
  model card, evaluation reports), and a marker (`FLAX_MARKER`, written last) holding the params'
  fingerprint (`FLAX_DIGEST_KEY`) that `load_model` checks."""
  import orbax.checkpoint as ocp

  out = Path(out_dir).absolute()
  params = jax.device_get(model.params)
  io.quiet_orbax()
  with writing(out):
    out.mkdir(parents=True, exist_ok=True)
    (out / FLAX_MARKER).unlink(missing_ok=True)  # an interrupted save leaves no marker for stale params
    try:
      with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(out / "params", params, force=True)
        ckpt.wait_until_finished()
    except (ValueError, RuntimeError) as e:  # Orbax wraps a full disk in these
      raise io.write_error(out / "params", e) from e
    model.config.to_json(out / "config.json")
    save_tokenizer(model.tokenizer, out)
    write_extras(model, out, "flax", evaluation=evaluation, name=name or str(out_dir), license=license)
    write_json(
      out / FLAX_MARKER, {"format": "clipseg-jax params", "version": 1, FLAX_DIGEST_KEY: io.fingerprint(params)}
    )
  return out


def export_decoder(
  model, out_dir: str | os.PathLike, *, clip: str, evaluation=None, name=None, license=None, notes=None
) -> Path:
  """The decoder alone (`decoder.safetensors`, HF key names) + `config.json` + a marker naming `clip`
  (any CLIP source load_model takes, e.g. "embedded:synthetic-clip") and its fingerprint, checked when
  `load_model` composes the two. How the embedded model ships without a second copy of its CLIP.
  notes: paragraphs for the card's introduction (e.g. how to reproduce the model).
  Refused when the model's CLIP weights are not exactly `clip`'s (a fine-tuned CLIP: use export_hf)."""
  digest = io.fingerprint(model.params["clip"])
  clip_dir = io.resolve(clip)
  template = {"clip": hf.param_template(model.config)["clip"]}
  named = hf.from_hf(backbone.clip_state(io.read_state(clip_dir)), template, source=str(clip_dir))
  if io.fingerprint(named["clip"]) != digest:
    raise ValueError(f"the model's CLIP weights are not those of {clip!r} (fine-tuned?): export it whole (export_hf)")
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  decoder = {k: v for k, v in hf.to_hf(jax.device_get(model.params)).items() if k.startswith("decoder.")}
  io.write_safetensors(decoder, out / DECODER_WEIGHTS)
  model.config.to_json(out / "config.json")
  write_extras(model, out, "decoder", evaluation=evaluation, name=name, license=license, clip=clip, notes=notes)
  write_json(out / DECODER_MARKER, {"format": "clipseg-jax decoder", "version": 1, "clip": clip, "clip_sha256": digest})
  return out


def push_to_hub(
  model,
  repo_id: str,
  *,
  format: str = "hf",
  private: bool = False,
  revision: str | None = None,
  token: str | None = None,
  commit_message: str | None = None,
  evaluation=None,
  license: str | None = None,
) -> str:
  """Export `model` (format "hf": transformers' layout; "flax": this project's) with its card into a
  temporary folder and upload it to the Hub repository `repo_id` (created if missing) in one commit,
  on branch `revision` if given. Returns the commit URL."""
  if format not in PUSH_FORMATS:
    raise ValueError(f"format must be one of {', '.join(PUSH_FORMATS)}, got {format!r}")
  hub.check_repo_id(repo_id)  # before any export work
  write = export_hf if format == "hf" else save
  with tempfile.TemporaryDirectory(prefix="clipseg-jax-push-") as tmp:
    folder = Path(tmp) / "model"
    write(model, folder, evaluation=evaluation, name=repo_id, license=license)
    return hub.upload_folder(
      folder, repo_id, private=private, revision=revision, token=token, commit_message=commit_message
    )
