"""The original's CLIPDenseBaseline (timojl/clipseg models/clipseg.py) as a decoder variant (`reduce2_dim`)."""

import jax
import numpy as np
import pytest

from clipseg_jax.config import ClipSegConfig, tiny_config
from clipseg_jax.models.clipseg import ClipSegModel

RD, RD2, WIDTH, E, GRID, PATCH = 16, 8, 32, 24, 4, 16


def torch_baseline(torch, activation, cond, w):
  """CLIPDenseBaseline.forward from its definition, after CLIP: activation [tokens, batch, width]."""
  nn = torch.nn
  reduce, film_mul, film_add = nn.Linear(WIDTH, RD), nn.Linear(E, RD), nn.Linear(E, RD)
  reduce2 = nn.Sequential(nn.Linear(RD, RD2), nn.ReLU(), nn.Linear(RD2, RD))
  trans_conv = nn.ConvTranspose2d(RD, 1, (PATCH, PATCH), stride=(PATCH, PATCH))
  with torch.no_grad():
    for mod, key in (
      (reduce, "reduces_0"),
      (film_mul, "film_mul"),
      (film_add, "film_add"),
      (reduce2[0], "reduce2_0"),
      (reduce2[2], "reduce2_2"),
    ):
      mod.weight.copy_(torch.tensor(np.asarray(w[key]["kernel"]).T))
      mod.bias.copy_(torch.tensor(np.asarray(w[key]["bias"])))
    tc = w["transposed_convolution"]
    trans_conv.weight.copy_(torch.tensor(np.asarray(tc["kernel"]).transpose(3, 2, 0, 1)))
    trans_conv.bias.copy_(torch.tensor(np.asarray(tc["bias"])))
    a = reduce(activation)
    a = film_mul(cond) * a + film_add(cond)
    a = reduce2(a)
    a = a[1:].permute(1, 2, 0)
    size = int(np.sqrt(a.shape[2]))
    a = a.view(activation.shape[1], a.shape[1], size, size)
    return trans_conv(a)[:, 0].numpy()


def test_baseline_head_matches_the_original(torch):
  config = tiny_config(extract_layers=(3,), reduce_dim=RD, use_decoder_blocks=False, reduce2_dim=RD2)
  act = jax.random.normal(jax.random.key(0), (2, 1 + GRID * GRID, WIDTH))
  cond = jax.random.normal(jax.random.key(1), (2, E))
  module = ClipSegModel(config)
  params = module.init(jax.random.key(2), [act], cond, method=ClipSegModel.decode_activations)["params"]
  params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(3), p.shape), params)  # biases too
  assert set(params["decoder"]) == {
    "film_mul",
    "film_add",
    "reduces_0",
    "reduce2_0",
    "reduce2_2",
    "transposed_convolution",
  }
  ours = module.apply({"params": params}, [act], cond, method=ClipSegModel.decode_activations)
  want = torch_baseline(
    torch, torch.tensor(np.asarray(act)).permute(1, 0, 2), torch.tensor(np.asarray(cond)), params["decoder"]
  )
  assert ours.shape == want.shape == (2, GRID * PATCH, GRID * PATCH)
  np.testing.assert_allclose(ours, want, atol=2e-5)


def test_baseline_config_is_checked_and_not_exported_to_hf(tmp_path):
  with pytest.raises(ValueError, match="reduce2_dim=8 .* use_decoder_blocks=False"):
    ClipSegConfig(reduce2_dim=8)
  config = ClipSegConfig(extract_layers=(9,), use_decoder_blocks=False, reduce2_dim=64)
  assert not config.hf_compatible
  assert ClipSegConfig.from_dict(config.to_dict()) == config  # our own format keeps it
  assert "reduce2_dim" not in ClipSegConfig().to_dict()  # HF configs stay as they were
