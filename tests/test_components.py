"""Pieces checked against their PyTorch/OpenAI references: bicubic position embeddings, tokenizer."""

import numpy as np
import pytest
import torch

from clipseg_jax.models.posemb import bicubic_matrix, resize_position_embedding
from clipseg_jax.tokenizer import default_tokenizer


@pytest.mark.parametrize("n_in,n_out", [(14, 22), (14, 30), (14, 14), (7, 3), (14, 5), (2, 9)])
def test_bicubic_matches_torch(n_in, n_out):
  rng = np.random.RandomState(n_in * 100 + n_out)
  pos = rng.randn(1 + n_in * n_in, 8).astype(np.float32)
  grid = torch.from_numpy(pos[1:].reshape(1, n_in, n_in, 8)).permute(0, 3, 1, 2)
  want = torch.nn.functional.interpolate(grid, size=(n_out, n_out), mode="bicubic", align_corners=False)
  want = want.permute(0, 2, 3, 1).reshape(-1, 8).numpy()
  got = np.asarray(resize_position_embedding(pos, n_out))
  np.testing.assert_array_equal(got[0], pos[0])
  np.testing.assert_allclose(got[1:], want, atol=5e-6, rtol=0)


def test_bicubic_rows_sum_to_one():
  np.testing.assert_allclose(bicubic_matrix(14, 22).sum(1), 1.0, atol=1e-12)


def test_tokenizer_offline():
  tok = default_tokenizer()
  assert len(tok) == 49408
  assert tok("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
  assert tok.model_max_length == 77
  long = tok("word " * 200, truncation=True)["input_ids"]
  assert len(long) == 77 and long[-1] == 49407
