"""Each released architecture builds (`jax.eval_shape`, no weights allocated) with exactly the tensor
names and shapes of transformers' model for the same config."""

from pathlib import Path

import jax
import pytest

from clipseg_jax.config import ClipSegConfig
from clipseg_jax.weights import hf

RELEASED = {  # the CIDAS hub models / original decoder files
  "rd64-uni": ClipSegConfig(reduce_dim=64),
  "rd16-uni": ClipSegConfig(reduce_dim=16),
  "rd64-uni-refined": ClipSegConfig(reduce_dim=64, use_complex_transposed_convolution=True),
}


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_released_config_builds_like_transformers(name, torch):
  from transformers import CLIPSegConfig, CLIPSegForImageSegmentation

  config = RELEASED[name]
  template = hf.param_template(config)
  with torch.device("meta"):
    ref = CLIPSegForImageSegmentation(CLIPSegConfig(**config.to_dict()))
  want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
  assert hf.hf_shapes(template) == want
  if name == "rd64-uni-refined":  # parameter counts of the released refined model
    assert sum(x.size for x in jax.tree.leaves(template)) == 150_747_746
    assert sum(x.size for x in jax.tree.leaves(template["decoder"])) == 1_127_009


def test_config_json_round_trip(tmp_path):
  config = RELEASED["rd64-uni-refined"]
  config.to_json(tmp_path / "config.json")
  assert ClipSegConfig.from_json(tmp_path / "config.json") == config


@pytest.mark.parametrize(
  "fields,match",
  [
    (dict(extract_layers=(3, 6, 12)), "outside the vision tower"),
    (dict(conditional_layer=3), "conditional_layer=3"),
    (dict(reduce_dim=30), "not divisible by its 4 attention heads"),
  ],
)
def test_invalid_configs(fields, match):
  with pytest.raises(ValueError, match=match):
    ClipSegConfig(**fields)


RECIPES = [
  "rd64_uni",
  "rd16_uni",
  "rd64_uni_refined",
  "rd64_uni_pc",
  "rd64_uni_novis",
  "rd64_uni_visual",
  "clip_deconv",
  "clip_baseline",
  "pascal5i",
  "pascal5i_baseline:3",
  "pascal_zeroshot:2",
  "synthetic",
]


@pytest.mark.parametrize("name", RECIPES)
def test_training_recipe_builds(name, tmp_path):
  """Each recipe's model builds (`jax.eval_shape`: no weights) on a ViT-B/16 CLIP config (config.json
  only, as openai/clip-vit-base-patch16 has it), and the contract's fields are there."""
  from transformers import CLIPConfig

  from clipseg_jax.models.clipseg import init_params
  from clipseg_jax.train.recipe_model import model_config
  from clipseg_jax.train.recipes import load_config

  CLIPConfig(vision_config=dict(patch_size=16), projection_dim=512).save_pretrained(tmp_path)
  cfg = load_config(name)
  contract = (
    "total_steps",
    "batch_size",
    "checkpoint_every",
    "seed",
    "data.name",
    "data.data_dir",
    "optim.learning_rate",
  )
  for key in contract:  # each is overridable from the command line, with its type checked
    node = cfg
    for part in key.split("."):
      node = node[part]
    value = "7" if isinstance(node, int) else "0.5" if isinstance(node, float) else "x"
    assert load_config(name, [f"--config.{key}={value}"]).to_dict() != cfg.to_dict()
  if name == "synthetic":
    assert cfg.batch_size % 8 == 0  # shards over 8 devices
    return
  cfg.model.clip = str(tmp_path)
  config = model_config(cfg.model)
  shapes = jax.eval_shape(lambda: init_params(config))
  decoder = sum(x.size for x in jax.tree.leaves(shapes["decoder"]))
  if name == "rd64_uni_refined":
    assert decoder == 1_127_009
  if name == "clip_deconv":
    assert "layers_0" not in shapes["decoder"] and config.use_decoder_blocks is False
  if name.startswith(("clip_baseline", "pascal5i_baseline")):  # CLIPDenseBaseline: block 9, reduce2 MLP
    assert config.extract_layers == (9,) and "reduce2_0" in shapes["decoder"] and "layers_0" not in shapes["decoder"]
  else:  # the original's training yamls: extract_layers [3, 7, 9], decoder dropout 0.1 (blocks only), AMP
    assert config.extract_layers in ((3, 7, 9), (9,))
    assert cfg.model.decoder_dropout == (0.1 if config.use_decoder_blocks else 0.0)
  assert cfg.optim.compute_dtype == "bfloat16"


def test_paper_recipes_follow_the_yamls():
  """Settings each recipe takes from its timojl/clipseg yaml row."""
  from clipseg_jax.train.recipes import load_config

  novis, visual, pc = load_config("rd64_uni_novis"), load_config("rd64_uni_visual"), load_config("rd64_uni_pc")
  assert (novis.data.pcplus.visual_prompts, novis.data.pcplus.q_neg, tuple(novis.data.pcplus.templates)) == (
    False,
    0.2,
    ("{}",),
  )
  assert tuple(pc.data.pcplus.templates) == ("{}",)  # mix: False -> raw phrases
  assert visual.data.only_visual and visual.data.pcplus.mix_max == 0.0 and visual.data.pcplus.q_neg == 0.2
  fold2 = load_config("pascal5i:2")
  assert fold2.data.heldout_classes == ("diningtable", "dog", "horse", "motorbike", "person")
  assert fold2.data.heldout_rule == "wordnet" and fold2.data.pcplus.mix_max == 0.5
  assert len(load_config("pascal_zeroshot").data.heldout_classes) == 10  # rd64-uni-zs5: 5 pairs
  base = load_config("pascal5i_baseline:1")
  assert (base.data.pcplus.q_neg, base.data.pcplus.mix_max, base.model.reduce2_dim) == (0.0, 1.0, 64)


def test_configs_take_overrides_as_config_flags_does(tmp_path):
  """Recipe names and file paths; `--config.KEY=VALUE` and `--config.KEY VALUE`; typos list the keys."""
  from clipseg_jax.train.recipes import load_config, recipe_names

  assert {"synthetic", "synthetic_clip", "rd64_uni", "clip_deconv"} <= set(recipe_names())
  cfg = load_config(
    "synthetic", ["--config.total_steps=7", "--config.model.extract_layers", "(1, 3)", "--config.data.pcplus.augment"]
  )  # absl booleans: bare or =True
  assert (cfg.total_steps, cfg.model.extract_layers, cfg.data.pcplus.augment) == (7, (1, 3), True)
  with pytest.raises(
    ValueError, match=r"unknown config key 'model.extract_layer'; valid keys at model: .*extract_layers"
  ):
    load_config("synthetic", ["--config.model.extract_layer=(1,)"])
  with pytest.raises(ValueError, match="total_steps"):
    load_config("synthetic", ["--config.total_steps=many"])
  with pytest.raises(FileNotFoundError, match="neither a file nor a shipped recipe.*synthetic"):
    load_config("synthetc")
  own = tmp_path / "mine.py"
  own.write_text(
    "from clipseg_jax.configs import synthetic\n\n\ndef get_config():\n"
    "  c = synthetic.get_config()\n  c.total_steps = 3\n  return c\n"
  )
  assert load_config(str(own)).total_steps == 3


def test_recipes_import_no_library_code():
  """Recipes hold literals: a config file imports ml_collections, the standard library and other
  recipes (clipseg_jax.configs), nothing else of clipseg_jax (the library reads the config, not back)."""
  import ast
  import sys

  from clipseg_jax import configs

  allowed = {"ml_collections", "clipseg_jax"} | set(sys.stdlib_module_names)
  for path in sorted(Path(configs.__file__).parent.glob("*.py")):
    for node in ast.walk(ast.parse(path.read_text())):
      names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
      if isinstance(node, ast.ImportFrom):
        names = [node.module or ""] if not node.level else ["clipseg_jax.configs"]
      for name in names:
        assert name.split(".")[0] in allowed, (path.name, name)
        assert name == "clipseg_jax.configs" or not name.startswith("clipseg_jax"), (path.name, name)


def test_recipe_literals_are_the_library_defaults(monkeypatch, tmp_path):
  from clipseg_jax.configs import common, pascal5i, pascal_zeroshot
  from clipseg_jax.input_pipeline import heldout, pcplus
  from clipseg_jax.input_pipeline.sources import data_dir_or_default
  from clipseg_jax.train import freeze
  from clipseg_jax.train.recipes import load_config

  assert common.SHUFFLE_PLUS == pcplus.TEMPLATES and common.DECODER_ONLY == freeze.DEFAULT_RULES
  assert [list(c) for c in pascal5i.FOLD_CLASSES] == [heldout.fold_classes(f) for f in range(4)]
  assert pascal_zeroshot.PAIRS == heldout.ZERO_SHOT_PAIRS
  assert load_config("pascal_zeroshot:2").data.heldout_classes == tuple(heldout.zero_shot_classes(2))
  for recipe, arg, match in ((pascal5i, "4", "fold must be 0-3"), (pascal_zeroshot, "6", "removes 1-5 class pairs")):
    with pytest.raises(ValueError, match=match):
      recipe.get_config(arg)
  # An unset data directory is $TFDS_DATA_DIR (as `clipseg-jax data build` writes there), else TFDS's default.
  cfg = load_config("synthetic")
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
  assert data_dir_or_default(cfg.data.data_dir) == str(tmp_path)
  assert data_dir_or_default(load_config("synthetic", ["--config.data.data_dir=~/d"]).data.data_dir) == str(
    Path("~/d").expanduser()
  )
  from clipseg_jax.cli.main import build_parser

  assert build_parser().parse_args(["data", "build", "synthetic"]).data_dir == str(tmp_path)
  monkeypatch.delenv("TFDS_DATA_DIR")
  assert data_dir_or_default(cfg.data.data_dir) == str(Path("~/tensorflow_datasets").expanduser())
