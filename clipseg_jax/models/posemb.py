"""Resizing CLIP's position-embedding grid exactly as PyTorch's bicubic `interpolate` does.

`jax.image.resize(..., "cubic")` uses the Keys kernel with a = -0.5 and differs from torch (a = -0.75,
`align_corners=False`, clamped borders) by up to 0.38, so we build the separable interpolation
matrices ourselves in float64 and apply them as two small matmuls.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

_A = -0.75  # torch's cubic convolution coefficient


def _cubic_weights(t: np.ndarray) -> np.ndarray:
  """Weights of the 4 taps at offsets -1, 0, 1, 2 for fractional positions t in [0, 1)."""

  def near(x):  # |x| <= 1
    return ((_A + 2) * x - (_A + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((_A * x - 5 * _A) * x + 8 * _A) * x - 4 * _A

  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


@functools.cache
def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] matrix M with M @ x == torch bicubic resize (align_corners=False) of x along one axis."""
  src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5  # not clamped, as in torch
  base = np.floor(src)
  weights = _cubic_weights(src - base)
  m = np.zeros((n_out, n_in), np.float64)
  for tap in range(4):
    idx = np.clip(base.astype(np.int64) - 1 + tap, 0, n_in - 1)  # torch clamps the indices
    np.add.at(m, (np.arange(n_out), idx), weights[:, tap])
  return m


def resize_position_embedding(pos: jnp.ndarray, grid_out: int) -> jnp.ndarray:
  """[1 + g*g, D] class + grid embeddings -> [1 + grid_out**2, D]."""
  grid_in = int(round((pos.shape[0] - 1) ** 0.5))
  if grid_in * grid_in != pos.shape[0] - 1:
    raise ValueError(f"position embedding of {pos.shape[0] - 1} patches is not a square grid")
  if grid_in == grid_out:
    return pos
  m = jnp.asarray(bicubic_matrix(grid_in, grid_out), pos.dtype)
  grid = pos[1:].reshape(grid_in, grid_in, -1)
  grid = jnp.einsum("oi,ijd->ojd", m, grid, precision="highest")
  grid = jnp.einsum("pj,ojd->opd", m, grid, precision="highest")
  return jnp.concatenate([pos[:1], grid.reshape(grid_out * grid_out, -1)], axis=0)
