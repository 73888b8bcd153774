"""Pieces checked against their PyTorch/OpenAI references: bicubic position embeddings, tokenizer."""

import numpy as np
import pytest

from clipseg_jax.models.posemb import bicubic_matrix, resize_position_embedding
from clipseg_jax.tokenizer import default_tokenizer, tokenize


@pytest.mark.parametrize("n_in,n_out", [(14, 22), (14, 30), (14, 14), (7, 3), (14, 5), (2, 9)])
def test_bicubic_matches_torch(n_in, n_out, torch):
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
  """OpenAI CLIP's tokenizer from the files inside the package (ids as openai/clip-vit-base-patch16)."""
  tok = default_tokenizer()
  assert len(tok) == 49408
  assert tok("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
  assert tok.model_max_length == 77
  with pytest.warns(UserWarning, match="202 tokens; truncated to 77"):
    ids, mask = tokenize(tok, ["a photo of a cat", "word " * 200])
  assert ids.shape == mask.shape == (2, 77) and ids.dtype == np.int32
  assert ids[1, -1] == 49407 and mask[1].all()  # truncated, still ending with end-of-text
  assert ids[0, 7:].tolist() == [tok.pad_token_id] * 70 and mask[0].sum() == 7
  ids, mask = tokenize(tok, ["a photo of a cat"], multiple=8)
  assert ids.shape == (1, 8) and mask.sum() == 7


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_fused_attention_matches_torch_eager(dtype, torch):
  """Reduced precision runs attention through jax.nn.dot_product_attention; with a causal + padding
  bias (the text tower's) it agrees with torch's float32 softmax attention to the dtype's precision."""
  import jax.numpy as jnp

  from clipseg_jax.models.layers import fused_attention

  rng = np.random.RandomState(0)
  q, k, v = (rng.randn(2, 7, 4, 16).astype(np.float32) for _ in range(3))
  keep = np.tril(np.ones((7, 7), bool))[None] & (np.arange(7) < np.array([[7], [4]]))[:, None, :]
  bias = np.where(keep, 0.0, np.finfo(np.float32).min)[:, None].astype(np.float32)
  tq, tk, tv = (torch.from_numpy(t).transpose(1, 2) for t in (q, k, v))
  want = torch.softmax(tq @ tk.transpose(-1, -2) / 4 + torch.from_numpy(bias), -1) @ tv
  got = fused_attention(*(jnp.asarray(t, dtype) for t in (q, k, v)), jnp.asarray(bias))
  assert got.dtype == jnp.dtype(dtype) and np.isfinite(np.asarray(got, np.float32)).all()
  np.testing.assert_allclose(np.asarray(got, np.float32), want.transpose(1, 2).numpy(), atol=0.05)


def test_fused_attention_takes_leading_batch_dims():
  """The decoder attends over [images, prompts, tokens, heads, dim]: the fused kernel takes one batch
  dimension, so several must give softmax(q.k / sqrt(d) + bias) v per slice, written out here."""
  import jax.numpy as jnp

  from clipseg_jax.models.layers import fused_attention

  rng = np.random.RandomState(0)
  q, k, v = (rng.randn(2, 3, 5, 4, 8).astype(np.float32) for _ in range(3))
  bias = rng.randn(1, 3, 1, 5, 5).astype(np.float32)  # broadcast over images and heads
  got = np.asarray(fused_attention(*(jnp.asarray(t, jnp.bfloat16) for t in (q, k, v)), jnp.asarray(bias)), np.float32)
  scores = np.einsum("abqhd,abkhd->abhqk", q, k) / np.sqrt(8) + bias
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  want = np.einsum("abhqk,abkhd->abqhd", probs / probs.sum(-1, keepdims=True), v)
  assert got.shape == want.shape and np.abs(got - want).max() < 0.05  # bf16 operands


def test_tokenize_cleans_text_as_openai_clip():
  """OpenAI's `clip.tokenize` (what the released weights saw) runs ftfy, unescapes HTML entities twice
  and collapses whitespace before BPE; plain strings keep their ids."""
  tok = default_tokenizer()
  ids = lambda *texts: tokenize(tok, texts)[0]
  want = [49406, 6611, 261, 8253, 49407]  # "salt & pepper"
  assert ids("salt &amp; pepper")[0, :5].tolist() == want and ids("salt &amp; pepper")[0, 5] == tok.pad_token_id
  assert ids("salt &amp;amp; pepper")[0, :5].tolist() == want  # unescaped twice
  assert ids("  salt\n&\tpepper ")[0, :5].tolist() == want
  np.testing.assert_array_equal(ids("Ã©clair"), ids("éclair"))  # mojibake repaired by ftfy
  plain = ["a photo of a cat", "the red one on the left", "A Large DOG", "x-ray of 2 hands"]
  want_plain = tok(plain, padding="max_length", max_length=77, return_tensors="np")["input_ids"]
  np.testing.assert_array_equal(ids(*plain), want_plain)
