"""Run the embedded default end to end, offline: segment a generated scene and check PyTorch parity.

Preview of the main job. Until the embedded pretrained backbone ships (training, issue 5), the model
is the full CLIPSeg ViT-B/16 refined architecture with random weights: the masks are noise, but every
stage runs for real (tokenizer, vision tower, decoder, export to transformers, and transformers'
PyTorch model agreeing with ours on the exported weights).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

PROMPTS = ("a red circle", "a blue square", "a green triangle")


def add_arguments(p):
  p.add_argument("--out", default="out/demo", help="output directory")
  p.add_argument("--seed", type=int, default=0)


def scene(size: int = 480) -> Image.Image:
  """A picture with the three shapes the prompts name."""
  im = Image.new("RGB", (size, size), (235, 230, 215))
  d = ImageDraw.Draw(im)
  s = size // 10
  d.ellipse([1 * s, 1 * s, 4 * s, 4 * s], fill=(210, 30, 30))
  d.rectangle([6 * s, 2 * s, 9 * s, 5 * s], fill=(30, 60, 200))
  d.polygon([(2 * s, 9 * s), (5 * s, 9 * s), (3.5 * s, 6 * s)], fill=(30, 160, 60))
  return im


def run(args):
  import jax

  from clipseg_jax import visualize
  from clipseg_jax.api import ClipSeg
  from clipseg_jax.config import ClipSegConfig
  from clipseg_jax.models.clipseg import init_params

  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  config = ClipSegConfig(use_complex_transposed_convolution=True)
  model = ClipSeg(config, init_params(config, jax.random.PRNGKey(args.seed)))
  image = scene()
  image.save(out / "scene.png")
  t = time.perf_counter()
  probs = model.predict(image, list(PROMPTS))[0]
  print(f"segmented a {image.width}x{image.height} image with {len(PROMPTS)} prompts in "
        f"{time.perf_counter() - t:.2f} s (includes compilation)")
  visualize.overlay(image, probs, PROMPTS).save(out / "overlay.png")
  for i, (prompt, p) in enumerate(zip(PROMPTS, probs)):
    visualize.mask_image(p).save(out / f"mask_{i}_{visualize.slug(prompt)}.png")
  hf_dir = model.export_hf(out / "hf")
  print(f"exported to {hf_dir}; {_parity(model, hf_dir)}")
  print(f"wrote {out}/overlay.png and one mask per prompt (random weights: expect noise)")


def _parity(model, hf_dir) -> str:
  try:
    import torch
    from transformers import CLIPSegForImageSegmentation
  except ImportError:
    return "PyTorch not installed: parity check skipped (pip install 'clipseg-jax[torch]')"
  from clipseg_jax import preprocess
  ref = CLIPSegForImageSegmentation.from_pretrained(hf_dir, attn_implementation="eager").eval()
  pixels = preprocess.batch_pixels([scene()])
  tok = model.tokenizer([PROMPTS[0]], return_tensors="np")
  ours = np.asarray(model(pixels, input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]))
  with torch.no_grad():
    theirs = ref(pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2)),
                 input_ids=torch.from_numpy(tok["input_ids"]),
                 attention_mask=torch.from_numpy(tok["attention_mask"])).logits.numpy()
  err = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
  status = "OK" if err <= 1e-5 else "MISMATCH"
  return f"transformers' PyTorch model on the exported weights: max relative logit error {err:.1e} ({status})"
