"""Logit agreement of clipseg-jax with transformers' PyTorch model (float32, eager attention, on the
CPU) for the full refined ViT-B/16 at 352 px, on this machine's default JAX device, at JAX's default
matmul precision and at the HIGHEST precision `load_model` asks for in float32. On GPUs JAX's default
runs float32 matmuls in TF32 while PyTorch's does not.

  python -m experiments.bench.parity
"""

from __future__ import annotations

import jax
import numpy as np
import torch

from experiments.bench.common import models


def main():
  ours, theirs = models(refined=True, attn_implementation="eager")
  rng = np.random.RandomState(0)
  pixels = rng.randn(2, 352, 352, 3).astype(np.float32)
  ids = np.array([[49406, 320, 2368, 49407, 49407], [49406, 320, 1125, 539, 49407]], np.int64)
  mask = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], np.int64)
  with torch.no_grad():
    want = theirs(
      pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2),
      input_ids=torch.from_numpy(ids),
      attention_mask=torch.from_numpy(mask),
    ).logits.numpy()
  sigmoid = lambda x: 1 / (1 + np.exp(-x))
  args = ours._check_inputs(pixels, ids, mask, None, None)
  default = jax.jit(lambda params, *a: ours.module.apply({"params": params}, *a)["logits"])
  rows = {"JAX's default": default(ours.params, *args), "load_model's (HIGHEST)": ours._logits(ours.params, *args)}
  print(f"clipseg-jax on {jax.devices()[0].device_kind} against transformers float32 eager on the CPU")
  print(f"  {'matmul precision':24s} {'max |d logits|':>15s} {'max |d prob|':>13s}")
  for name, got in rows.items():
    got = np.asarray(got)
    print(f"  {name:24s} {np.abs(got - want).max():15.2e} {np.abs(sigmoid(got) - sigmoid(want)).max():13.2e}")


if __name__ == "__main__":
  main()
