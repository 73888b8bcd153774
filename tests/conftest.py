"""Shared fixtures: random-weight transformers checkpoints saved to disk (tests never reach the network)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
import pytest
import torch

from clipseg_jax.config import ClipSegConfig, tiny_config


def rel_err(ours, ref) -> float:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (ours.shape, ref.shape)
  return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30))


def make_hf_model(config: ClipSegConfig, seed: int = 0):
  """transformers' CLIPSegForImageSegmentation with random weights, biases and LayerNorm scales too
  (so that a swapped or dropped tensor in conversion cannot go unnoticed)."""
  from transformers import CLIPSegConfig, CLIPSegForImageSegmentation
  torch.manual_seed(seed)
  model = CLIPSegForImageSegmentation(CLIPSegConfig(**config.to_dict()))
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("bias"):
        p.normal_(0.0, 0.05)
      elif "norm" in name and p.ndim == 1:
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
  return model.eval()


def save_hf(model, directory) -> str:
  """Save, then reload with eager attention (the parity reference)."""
  from transformers import CLIPSegForImageSegmentation
  model.save_pretrained(directory)
  return CLIPSegForImageSegmentation.from_pretrained(directory, attn_implementation="eager").eval()


def torch_nchw(x):
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2)))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
  """(directory, eager reference model) for the tiny refined config."""
  d = tmp_path_factory.mktemp("tiny_refined")
  ref = save_hf(make_hf_model(tiny_config(use_complex_transposed_convolution=True)), d)
  return str(d), ref


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
  from clipseg_jax import load_model
  return load_model(tiny_checkpoint[0])
