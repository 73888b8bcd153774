"""The model card (`README.md` with Hub front matter) written beside every export: what the model is, what
it was trained on, how it scored, which CLIP it needs (name and fingerprint), and how to load it.
Pure text from plain data (`card(facts)`), so every export format shares one renderer."""

from __future__ import annotations

import json
import math
from importlib import metadata

TAGS = ("clipseg", "image-segmentation", "jax", "flax")
PAPER = "https://arxiv.org/abs/2112.10003"
PROJECT = "clipseg-jax"
# Metrics of an evaluation report's results, in the order the card lists them (`clipseg-jax eval` names).
METRICS = (("miou", "mIoU"), ("iou_fg", "IoU_FG"), ("iou_bin", "IoU_BIN"), ("ap", "AP"))
FIXED_THRESHOLD = "0.5"  # the fixed threshold whose IoU_FG the card shows beside the best one
FORMATS = {
  "hf": "transformers' layout (`config.json` + `model.safetensors`), as the CIDAS/clipseg-* repositories",
  "flax": "clipseg-jax's Flax checkpoint (`config.json` + Orbax `params/`)",
  "decoder": "clipseg-jax's decoder-only layout (`decoder.safetensors`), loaded together with the CLIP it names",
  "original": "the original code's decoder state dict (timojl/clipseg `.pth` layout), the decoder only",
}


def version() -> str:
  try:
    return metadata.version(PROJECT)
  except metadata.PackageNotFoundError:  # a source checkout that was never installed
    return "unknown"


def front_matter(facts: dict) -> str:
  """Hub metadata; strings JSON-quoted (valid YAML) so that any name is safe."""
  library = "transformers" if facts["format"] == "hf" else PROJECT
  lines = ["---", f"library_name: {library}", f"license: {json.dumps(facts.get('license') or 'other')}", "tags:"]
  lines += [f"- {t}" for t in TAGS]
  # No pipeline_tag: transformers' pipeline("image-segmentation") refuses CLIPSeg (it needs prompts), so the
  # Hub's widget would fail; the card shows the CLIPSegProcessor call that works.
  if facts.get("base_model"):
    lines.append(f"base_model: {json.dumps(facts['base_model'])}")
  return "\n".join(lines + ["---"])


def _percent(x) -> str:
  return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def evaluation_rows(report: dict) -> list[tuple[str, str]]:
  """(metric, value in %) rows of one `clipseg-jax eval` report (`TASK.json`)."""
  results = report.get("results", {})
  rows = []
  for split, v in sorted(results.items()):  # zero-shot: one entry per unseen split
    if isinstance(v, dict) and "miou_unseen" in v:
      rows += [
        (f"{split} mIoU seen", _percent(v.get("miou_seen"))),
        (f"{split} mIoU unseen", _percent(v["miou_unseen"])),
      ]
  summary = results.get("mean", results)
  for key, label in METRICS:
    value = summary.get(key)
    if isinstance(value, dict):
      if key == "iou_fg" and FIXED_THRESHOLD in value.get("fixed", {}):
        rows.append((f"{label} (t={FIXED_THRESHOLD})", _percent(value["fixed"][FIXED_THRESHOLD])))
      t = value.get("threshold")
      rows.append((label + (f" (best t={t:.2f})" if isinstance(t, (int, float)) else ""), _percent(value.get("value"))))
    elif isinstance(value, (int, float)):
      rows.append((label, _percent(value)))
  return rows


def evaluation_section(reports: list[dict]) -> list[str]:
  if not reports:
    return ["## Evaluation", "", "No evaluation was recorded with this model (`clipseg-jax eval` writes one)."]
  lines = ["## Evaluation", ""]
  for report in reports:
    options = report.get("options") or {}
    what = ", ".join(
      f"{k} {options[k]}" for k in ("dataset", "split", "limit", "threshold") if options.get(k) is not None
    )
    images = report.get("results", {}).get("images")
    lines += [f"`clipseg-jax eval --task {report.get('task', '?')}`" + (f" ({what})" if what else "")]
    if images:
      lines[-1] += f", {images} images"
    lines += ["", "| metric | % |", "| --- | ---: |"]
    lines += [f"| {name} | {value} |" for name, value in evaluation_rows(report)]
    lines.append("")
  return lines[:-1]


def training_section(training: dict | None) -> list[str]:
  if not training:
    return ["## Training", "", "Not recorded with this model (it was not exported from a clipseg-jax training run)."]
  optim = training.get("optimizer", {})
  lines = ["## Training", "", "Trained with `clipseg-jax train` (the decoder only; CLIP frozen):", ""]
  facts = [
    ("dataset", training.get("dataset")),
    ("steps", training.get("steps")),
    ("batch size", training.get("batch_size")),
    ("image size", training.get("image_size")),
    ("prompts", ", ".join(training.get("prompts", [])) or None),
    ("prompt templates per phrase", training.get("templates") if (training.get("templates") or 0) > 1 else None),
    (
      "optimiser",
      optim
      and (
        f"AdamW, lr {optim.get('learning_rate')} cosine to {optim.get('end_learning_rate')}, "
        f"{optim.get('warmup_steps', 0)} warm-up steps, weight decay {optim.get('weight_decay')}"
      ),
    ),
    ("seed", training.get("seed")),
  ]
  lines += [f"- {name}: {value}" for name, value in facts if value not in (None, "", [])]
  return lines


def architecture_section(config: dict, image_size: int) -> list[str]:
  v, t = config.get("vision_config", {}), config.get("text_config", {})
  head = "refined (3x3 conv + two transposed convs)" if config.get("use_complex_transposed_convolution") else "simple"
  return [
    "## Model",
    "",
    f"CLIPSeg ([Lüddecke & Ecker, CVPR 2022]({PAPER})): a frozen CLIP and a small FiLM-conditioned decoder that "
    "segments an image for a text prompt, an example image with its mask, or any mix of the two.",
    "",
    f"- vision tower: {v.get('num_hidden_layers')} blocks of width {v.get('hidden_size')}, patch "
    f"{v.get('patch_size')}; text tower: {t.get('num_hidden_layers')} blocks of width {t.get('hidden_size')}; "
    f"joint space {config.get('projection_dim')}-d",
    f"- decoder: width {config.get('reduce_dim')}, reads vision blocks {config.get('extract_layers')}, {head} head",
    f"- input: {image_size}x{image_size} pixels (bilinear resize, ImageNet mean/std: `preprocessor_config.json`)",
  ]


def clip_section(facts: dict) -> list[str]:
  clip = facts.get("clip")
  lines = ["## CLIP backbone", ""]
  if facts["format"] in ("original", "decoder"):
    lines += ["This checkpoint holds the decoder only: it loads together with the CLIP it was trained on.", ""]
  lines.append(f"- CLIP: `{clip}`" if clip else "- CLIP: the towers included in this checkpoint")
  lines += [
    f"- fingerprint (sha256 of the CLIP parameters, `clipseg_jax.weights.io.fingerprint(model.params['clip'])`): "
    f"`{facts['clip_sha256']}`",
    "",
    "A decoder only fits the exact CLIP weights it was trained on; clipseg-jax checks this fingerprint where it "
    "was recorded.",
  ]
  return lines


def usage_section(facts: dict) -> list[str]:
  repo = facts.get("name") or "PATH_OR_REPO"
  lines = ["## How to use", ""]
  if facts["format"] == "hf":
    lines += [
      "With transformers (PyTorch):",
      "",
      "```python",
      "import torch",
      "from PIL import Image",
      "from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor",
      "",
      f'processor = CLIPSegProcessor.from_pretrained("{repo}")',
      f'model = CLIPSegForImageSegmentation.from_pretrained("{repo}")',
      'inputs = processor(text=["a red circle"], images=[Image.open("image.png")], return_tensors="pt")',
      "with torch.no_grad():",
      "    probs = torch.sigmoid(model(**inputs).logits)",
      "```",
      "",
    ]
  source = repo
  if facts["format"] == "original":
    source = f'{repo}", clip="{facts.get("clip") or "openai/clip-vit-base-patch16"}'
  lines += [
    "With clipseg-jax (JAX/Flax):",
    "",
    "```python",
    "import clipseg_jax",
    "",
    f'model = clipseg_jax.load_model("{source}")',
    'masks = model.predict(image, ["a red circle"], threshold=0.5)  # [images, prompts, H, W]',
    "```",
    "",
    f'or `clipseg-jax segment image.png --prompt "a red circle" --checkpoint {repo} --out masks/`.',
  ]
  return lines


def card(facts: dict) -> str:
  """The README.md of an export. facts: format (hf, flax, decoder, original), config (config.json's dict),
  image_size, clip_sha256, and optionally name (repo id), clip (its source), base_model, license,
  training (provenance of a training run), evaluations (`clipseg-jax eval` reports), notes (paragraphs
  for the introduction)."""
  title = facts.get("name") or "CLIPSeg"
  intro = [f"A CLIPSeg model in {FORMATS[facts['format']]}. Written by clipseg-jax {version()}."]
  for note in facts.get("notes") or []:
    intro += ["", note]
  sections = [
    [front_matter(facts), "", f"# {title}", "", *intro],
    architecture_section(facts["config"], facts["image_size"]),
    training_section(facts.get("training")),
    evaluation_section(facts.get("evaluations") or []),
    clip_section(facts),
    usage_section(facts),
  ]
  return "\n\n".join("\n".join(s) for s in sections) + "\n"
