"""Checkpoint import/export: HF round trip, original decoder files, Flax checkpoints, bad checkpoints."""

import json

import numpy as np
import pytest
from conftest import make_hf_model, max_rel_err, save_hf, torch_nchw
from safetensors.numpy import load_file, save_file

from clipseg_jax import load_model
from clipseg_jax.config import tiny_config
from clipseg_jax.weights.errors import CheckpointMismatchError
from clipseg_jax.weights.io import fingerprint

torch = pytest.importorskip("torch")  # every test here compares against PyTorch


@pytest.fixture(scope="module")
def tiny_model(tiny_checkpoint):
  """Here the model loaded from transformers' own checkpoint (the reference it is compared with)."""
  return load_model(tiny_checkpoint[0])


def test_export_hf_bit_identical(tiny_checkpoint, tiny_model, tmp_path):
  from transformers import CLIPSegForImageSegmentation

  directory, ref = tiny_checkpoint
  tiny_model.export_hf(tmp_path)
  back = CLIPSegForImageSegmentation.from_pretrained(tmp_path).state_dict()
  want = ref.state_dict()
  assert set(back) == set(want)
  for key, tensor in want.items():
    assert back[key].dtype == tensor.dtype and torch.equal(back[key], tensor), key
  # The exported file itself holds exactly the saved tensors, bit for bit.
  saved, exported = load_file(f"{directory}/model.safetensors"), load_file(tmp_path / "model.safetensors")
  assert saved.keys() == exported.keys()
  assert all(np.array_equal(saved[k], exported[k]) and saved[k].shape == exported[k].shape for k in saved)


# The documented mapping (the paper and timojl/clipseg's layout), written out independently of clipseg_jax.weights.
HF_TO_ORIGINAL = [
  ("decoder.layers.", "blocks."),
  (".mlp.fc1.", ".linear1."),
  (".mlp.fc2.", ".linear2."),
  (".layer_norm1.", ".norm1."),
  (".layer_norm2.", ".norm2."),
  ("decoder.transposed_convolution", "trans_conv"),
  ("decoder.", ""),
]


def original_state_from_hf(model) -> dict[str, torch.Tensor]:
  state = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("decoder.")}
  out = {}
  for key in list(state):
    if ".self_attn." in key and key.split(".")[-2] in ("q_proj", "k_proj", "v_proj"):
      continue
    new = key
    for a, b in HF_TO_ORIGINAL:
      new = new.replace(a, b)
    out[new] = state[key]
  for i in range(len(model.config.extract_layers)):
    for kind in ("weight", "bias"):
      out[f"blocks.{i}.self_attn.in_proj_{kind}"] = torch.cat(
        [state[f"decoder.layers.{i}.self_attn.{c}_proj.{kind}"] for c in "qkv"]
      )
  return out


def save_clip(model, directory):
  """The CLIPSeg model's towers as an HF CLIPModel checkpoint (openai/clip-vit-base-patch16 layout)."""
  from transformers import CLIPConfig, CLIPModel

  cfg = model.config
  clip = CLIPModel(
    CLIPConfig(
      text_config=cfg.text_config.to_dict(),
      vision_config=cfg.vision_config.to_dict(),
      projection_dim=cfg.projection_dim,
    )
  )
  missing = clip.load_state_dict(
    {k[len("clip.") :]: v for k, v in model.state_dict().items() if k.startswith("clip.")}, strict=True
  )
  assert not missing.missing_keys
  clip.save_pretrained(directory)


@pytest.mark.parametrize(
  "refined,reduce_dim",
  [pytest.param(False, 16, marks=pytest.mark.slow), (True, 16), pytest.param(False, 8, marks=pytest.mark.slow)],
)
def test_original_decoder_file(tmp_path, refined, reduce_dim):
  """rd64-uni / rd16-uni / rd64-uni-refined style files: config read off the keys, logits equal the
  HF model's, and export_original writes the same tensors back bit for bit (unused `reduce.*` too)."""
  ref = save_hf(
    make_hf_model(tiny_config(use_complex_transposed_convolution=refined, reduce_dim=reduce_dim), seed=7),
    tmp_path / "hf",
  )
  state = original_state_from_hf(ref)
  state["reduce.weight"] = torch.randn(reduce_dim, ref.config.vision_config.hidden_size)
  state["reduce.bias"] = torch.randn(reduce_dim)
  torch.save(state, tmp_path / "rd-uni.pth")
  save_clip(ref, tmp_path / "clip")

  model = load_model(tmp_path / "rd-uni.pth", clip=str(tmp_path / "clip"), extract_layers=(1, 2, 3))
  assert model.config.reduce_dim == reduce_dim
  assert model.config.use_complex_transposed_convolution == refined
  pixels = np.random.RandomState(7).randn(2, 64, 64, 3).astype(np.float32)
  tok = model.tokenizer(["a cat", "a big dog"], padding=True, return_tensors="np")
  with torch.no_grad():
    want = ref(
      pixel_values=torch_nchw(pixels),
      input_ids=torch.from_numpy(tok["input_ids"]),
      attention_mask=torch.from_numpy(tok["attention_mask"]),
    ).logits.numpy()
  assert max_rel_err(model(pixels, input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]), want) <= 1e-5

  model.export_original(tmp_path / "back.pth")
  back = torch.load(tmp_path / "back.pth", weights_only=True)
  assert set(back) == set(state)
  for key, tensor in state.items():
    assert torch.equal(back[key], tensor), key
  # The sidecar names the CLIP the decoder needs (the file holds the decoder only), with its fingerprint,
  # so the file loads without clip=.
  side = json.loads((tmp_path / "back.pth.json").read_text())
  assert side["clip"] == str(tmp_path / "clip") and "decoder only" in side["contents"]
  assert side["clip_sha256"] == fingerprint(model.params["clip"])
  again = load_model(tmp_path / "back.pth", extract_layers=(1, 2, 3))
  assert max_rel_err(again(pixels, input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]), want) <= 1e-5


def test_flax_checkpoint_round_trip(tiny_model, tmp_path):
  import jax

  tiny_model.save(tmp_path / "ckpt")
  back = load_model(tmp_path / "ckpt")
  assert back.config == tiny_model.config
  same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), back.params, tiny_model.params)
  assert all(jax.tree.leaves(same))


@pytest.fixture
def broken_checkpoint(tiny_checkpoint, tmp_path):
  import shutil

  src = tiny_checkpoint[0]
  shutil.copy(f"{src}/config.json", tmp_path / "config.json")
  state = load_file(f"{src}/model.safetensors")

  def write(edit):
    s = dict(state)
    edit(s)
    save_file(s, str(tmp_path / "model.safetensors"))
    return tmp_path

  return write


def test_missing_key_named(broken_checkpoint):
  path = broken_checkpoint(lambda s: s.pop("decoder.film_mul.weight"))
  with pytest.raises(CheckpointMismatchError, match=r"missing keys \(1\):\n\s+decoder\.film_mul\.weight"):
    load_model(path)


def test_misshaped_key_names_both_shapes(broken_checkpoint):
  path = broken_checkpoint(lambda s: s.update({"decoder.reduces.0.weight": np.zeros((16, 5), np.float32)}))
  with pytest.raises(
    CheckpointMismatchError, match=r"decoder\.reduces\.0\.weight: checkpoint \(16, 5\), model expects \(16, 32\)"
  ):
    load_model(path)


def test_unexpected_key_named(broken_checkpoint):
  path = broken_checkpoint(lambda s: s.update({"decoder.extra.weight": np.zeros(3, np.float32)}))
  with pytest.raises(CheckpointMismatchError, match=r"unexpected keys \(1\):\n\s+decoder\.extra\.weight"):
    load_model(path)


def test_original_file_needs_clip(tmp_path):
  torch.save({"film_mul.weight": torch.zeros(4, 4)}, tmp_path / "rd64-uni.pth")
  with pytest.raises(ValueError, match="clip="):
    load_model(tmp_path / "rd64-uni.pth")


def test_unknown_original_key_named(tmp_path):
  ref = make_hf_model(tiny_config(), seed=8)
  state = original_state_from_hf(ref)
  state["blocks.0.bogus.weight"] = torch.zeros(2)
  torch.save(state, tmp_path / "rd.pth")
  save_clip(ref, tmp_path / "clip")
  with pytest.raises(CheckpointMismatchError, match=r"blocks\.0\.bogus\.weight"):
    load_model(tmp_path / "rd.pth", clip=str(tmp_path / "clip"), extract_layers=(1, 2, 3))
