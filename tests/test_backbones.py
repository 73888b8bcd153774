"""Other CLIP backbones: ViT-B/32, ViT-L/14 and OpenCLIP models in HF CLIPModel layout (parity with
transformers' CLIPModel on random weights, tiny configs with each family's shapes), the refined head for
patch sizes other than 16, and a decoder refused on a CLIP it was not trained on."""

import json

import jax
import numpy as np
import pytest
from conftest import max_rel_err, perturb_biases_and_norms, training_overrides

from clipseg_jax.config import ClipSegConfig

# Each family's distinguishing shapes at tiny width: patch size, activation, LayerNorm eps, widths of the
# towers and of the joint space, EOS pooling (OpenCLIP exports use eos_token_id 2: argmax pooling).
FAMILIES = {
  "b32": dict(patch_size=32, image_size=64, hidden_act="quick_gelu", eps=1e-5, vision=32, text=32, projection=24),
  "l14": dict(patch_size=14, image_size=56, hidden_act="quick_gelu", eps=1e-5, vision=48, text=32, projection=40),
  "openclip": dict(patch_size=32, image_size=64, hidden_act="gelu", eps=1e-6, vision=32, text=48, projection=40),
}


def clip_config(family: str, layers: int = 3):
  from transformers import CLIPConfig

  f = FAMILIES[family]
  common = dict(intermediate_size=64, num_attention_heads=4, hidden_act=f["hidden_act"], layer_norm_eps=f["eps"])
  text = dict(hidden_size=f["text"], num_hidden_layers=2, **common)
  if family == "openclip":
    text.update(bos_token_id=0, eos_token_id=2, pad_token_id=1)
  vision = dict(
    hidden_size=f["vision"], num_hidden_layers=layers, image_size=f["image_size"], patch_size=f["patch_size"], **common
  )
  return CLIPConfig(text_config=text, vision_config=vision, projection_dim=f["projection"])


def save_clip(family: str, directory, seed: int = 0, layers: int = 3):
  """A random CLIPModel (biases and LayerNorm scales randomised too) saved in HF layout; returns the
  eager reference model."""
  import torch
  from transformers import CLIPModel

  torch.manual_seed(seed)
  model = perturb_biases_and_norms(CLIPModel(clip_config(family, layers)))
  model.save_pretrained(directory)
  return CLIPModel.from_pretrained(directory, attn_implementation="eager").eval()


@pytest.mark.slow  # ~35 s each here (a torch model, six compiled programs)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_clip_features_match_transformers(family, tmp_path, torch):
  """Every block's residual stream (what the decoder reads), the projected image and text embeddings."""
  from conftest import torch_nchw

  from clipseg_jax.models.clipseg import ClipSegModel
  from clipseg_jax.weights.backbone import clip_params

  ref = save_clip(family, tmp_path)
  raw = json.loads((tmp_path / "config.json").read_text())
  config = ClipSegConfig.from_clip_dict(raw, extract_layers=(0, 1, 2))
  assert config.vision_config.hidden_act == FAMILIES[family]["hidden_act"]
  params = {"clip": clip_params(config, str(tmp_path))}
  module = ClipSegModel(config)
  f = lambda method, *a: jax.jit(lambda p, *a: module.apply({"params": p}, *a, method=method))(params, *a)
  p = FAMILIES[family]["patch_size"]
  ids = np.array([[49406, 320, 2368, 49407, 0], [49406, 320, 1125, 539, 49407]], np.int64)
  if family == "openclip":  # argmax pooling: the EOS id is the largest
    ids = np.array([[0, 320, 2368, 49407, 1], [0, 320, 1125, 539, 49407]], np.int64)
  mask = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], np.int64)
  for grid, interpolate in ((FAMILIES[family]["image_size"] // p, False), (3 if p == 32 else 5, True)):
    pixels = np.random.RandomState(grid).randn(2, grid * p, grid * p, 3).astype(np.float32)
    with torch.no_grad():
      out = ref.vision_model(torch_nchw(pixels), output_hidden_states=True, interpolate_pos_encoding=interpolate)
      image = ref.visual_projection(out.pooler_output).numpy()
      text = ref.text_projection(
        ref.text_model(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).pooler_output
      ).numpy()
    acts = f(ClipSegModel.activations, pixels)
    for i, a in enumerate(acts):
      assert max_rel_err(a, out.hidden_states[i + 1].numpy()) <= 1e-5, (family, grid, i)
    assert max_rel_err(f(ClipSegModel.visual_embeddings, pixels), image) <= 1e-5
    assert max_rel_err(f(ClipSegModel.text_embeddings, ids.astype(np.int32), mask.astype(np.int32)), text) <= 1e-5


def test_refined_head_kernels():
  """Kernels (k1, k2) upsample by k1 * k2 = the patch size; transformers' p // 4 x p // 4 stays the default
  (exact for patch 16), and a model with other kernels is not exported to transformers' layout."""
  from clipseg_jax.config import tiny_config
  from clipseg_jax.models.clipseg import init_params

  base = tiny_config(use_complex_transposed_convolution=True)
  assert base.head_kernels == (4, 4) and base.hf_compatible and "transposed_convolution_kernels" not in base.to_dict()
  vision = dict(base.vision_config.__dict__, patch_size=14, image_size=56)
  vision.pop("extra")
  config = ClipSegConfig.from_dict(
    {**base.to_dict(), "vision_config": vision, "transposed_convolution_kernels": [7, 2]}
  )
  assert config.head_kernels == (7, 2) and not config.hf_compatible
  assert ClipSegConfig.from_dict(config.to_dict()) == config
  shapes = jax.eval_shape(lambda: init_params(config))["decoder"]
  assert shapes["transposed_convolution_2"]["kernel"].shape[:2] == (7, 7)
  assert shapes["transposed_convolution_4"]["kernel"].shape[:2] == (2, 2)
  with pytest.raises(ValueError, match=r"upsample by 12, not by the patch size 14"):
    ClipSegConfig.from_dict({**config.to_dict(), "transposed_convolution_kernels": [6, 2]})
  with pytest.raises(ValueError, match=r"divisible by 4.*\[7, 2\] for 14"):
    ClipSegConfig.from_dict({**config.to_dict(), "transposed_convolution_kernels": None})


def test_recipes_for_other_backbones(tmp_path):
  """rd64_uni_b32 and rd64_uni_l14 build on configs shaped as openai's B/32 and L/14 (config.json only):
  whole patch grids at their image sizes, extract layers at the paper's relative depths."""
  import jax.numpy as jnp
  from transformers import CLIPConfig

  from clipseg_jax.configs.rd64_uni_l14 import scaled_layers
  from clipseg_jax.models.clipseg import ClipSegModel, init_params
  from clipseg_jax.train.recipe_model import check_image_size, model_config
  from clipseg_jax.train.recipes import load_config

  assert scaled_layers((3, 7, 9), 12, 12) == (3, 7, 9) and scaled_layers() == (7, 15, 19)
  shapes = {
    "rd64_uni_b32": dict(vision_config=dict(patch_size=32), projection_dim=512),
    "rd64_uni_l14": dict(
      vision_config=dict(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=14
      ),
      text_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12),
      projection_dim=768,
    ),
  }
  for name, clip in shapes.items():
    CLIPConfig(**clip).save_pretrained(tmp_path / name)
    overrides = [f"--config.model.clip={tmp_path / name}", "--config.model.use_complex_transposed_convolution"]
    cfg = load_config(name, overrides)
    config = model_config(cfg.model)
    size = cfg.data.pcplus.image_size
    check_image_size(config, size, cfg.model.clip)

    def logits(config=config, size=size):
      pixels, cond = jnp.zeros((1, size, size, 3)), jnp.zeros((1, config.projection_dim))
      params = init_params(config)
      return ClipSegModel(config).apply({"params": params}, pixels, conditional_embeddings=cond)["logits"]

    assert jax.eval_shape(logits).shape == (1, size, size), name
  with pytest.raises(ValueError, match="not a multiple of the patch size 14 .* use 350 or 364"):
    check_image_size(config, 352, "L/14")


@pytest.fixture(scope="module")
def l14_run(training_root, tmp_path_factory):
  """A tiny ViT-L/14-shaped CLIP (patch 14, 56 px) with the refined head (7 x 2 kernels) trained a few
  steps on the synthetic set, through the CLI."""
  from clipseg_jax.cli.main import main

  root = tmp_path_factory.mktemp("l14")
  save_clip("l14", root / "clip", layers=4)
  extra = {
    "model.clip": str(root / "clip"),
    "data.pcplus.image_size": 56,
    "model.use_complex_transposed_convolution": True,
    "model.transposed_convolution_kernels": "(7, 2)",
    "total_steps": 4,
  }
  args = ["train", "--config", "synthetic", "--workdir", str(root / "run"), *training_overrides(training_root, **extra)]
  assert main(args) == 0
  return root


@pytest.mark.slow
def test_l14_shaped_model_trains_with_the_new_head(l14_run, training_root, tmp_path):
  """Its logits have the input's size (56 px: 4 x 4 patches of 14, upsampled 7 x 2), at other sizes too;
  loaded with another CLIP, its decoder is refused in one line naming both."""
  from clipseg_jax import load_model

  model = load_model(l14_run / "run")
  assert model.config.head_kernels == (7, 2)
  for size in (56, 84):
    pixels = np.random.RandomState(size).randn(1, size, size, 3).astype(np.float32)
    logits = model(pixels, conditional_embeddings=np.ones((1, model.config.projection_dim), np.float32))
    assert logits.shape == (1, size, size) and np.all(np.isfinite(logits))
  base = l14_run / "run" / "model" / "base.json"
  base.write_text(json.dumps({**json.loads(base.read_text()), "clip": str(training_root / "clip")}))
  with pytest.raises(ValueError) as e:
    load_model(l14_run / "run")
  message = str(e.value)
  assert "\n" not in message and "vision width 48" in message and "has width 32" in message
  assert str(training_root / "clip") in message and str(l14_run / "run") in message


def test_original_decoder_on_another_clip_is_refused(tiny_model, tmp_path, torch):
  """An original decoder file (reduces read 32-d activations) with a CLIP of width 48: one line, both named."""
  from clipseg_jax import load_model

  path = tiny_model.export_original(tmp_path / "rd.pth")
  save_clip("l14", tmp_path / "clip")
  with pytest.raises(ValueError) as e:
    load_model(path, clip=str(tmp_path / "clip"))
  message = str(e.value)
  assert "\n" not in message and "width 32" in message and "width 48" in message
  assert str(path) in message and str(tmp_path / "clip") in message
