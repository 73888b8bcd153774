"""Each released architecture builds (`jax.eval_shape`, no weights allocated) with exactly the tensor
names and shapes of transformers' model for the same config."""

import jax
import pytest
import torch

from clipseg_jax.config import ClipSegConfig
from clipseg_jax.weights import hf

RELEASED = {  # the CIDAS hub models / original decoder files
    "rd64-uni": ClipSegConfig(reduce_dim=64),
    "rd16-uni": ClipSegConfig(reduce_dim=16),
    "rd64-uni-refined": ClipSegConfig(reduce_dim=64, use_complex_transposed_convolution=True),
}


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_released_config_builds_like_transformers(name):
  from transformers import CLIPSegConfig, CLIPSegForImageSegmentation
  config = RELEASED[name]
  template = hf.param_template(config)
  with torch.device("meta"):
    ref = CLIPSegForImageSegmentation(CLIPSegConfig(**config.to_dict()))
  want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
  assert hf.hf_shapes(template) == want
  if name == "rd64-uni-refined":  # DESIGN.md section 4
    assert sum(x.size for x in jax.tree.leaves(template)) == 150_747_746
    assert sum(x.size for x in jax.tree.leaves(template["decoder"])) == 1_127_009


def test_config_json_round_trip(tmp_path):
  config = RELEASED["rd64-uni-refined"]
  config.to_json(tmp_path / "config.json")
  assert ClipSegConfig.from_json(tmp_path / "config.json") == config


@pytest.mark.parametrize("fields,match", [
    (dict(extract_layers=(3, 6, 12)), "outside the vision tower"),
    (dict(conditional_layer=3), "conditional_layer=3"),
    (dict(reduce_dim=30), "not divisible by its 4 attention heads"),
])
def test_invalid_configs(fields, match):
  with pytest.raises(ValueError, match=match):
    ClipSegConfig(**fields)
