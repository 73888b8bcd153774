"""Freeze rules (optim.freeze_rules): what trains, what holds optimiser state, where the backward pass
reaches, and fine-tuned CLIP leaves through sharding, resume, load_model and export."""

import jax
import ml_collections
import numpy as np
import pytest
from conftest import training_overrides

from clipseg_jax.train import freeze
from clipseg_jax.train import step as steps

LAST = "clip/vision_model/encoder/layers_3/.*"  # the tiny CLIP's last vision block (of 4)
LAST_TWO = "clip/vision_model/encoder/layers_[23]/.*"


def rules(*free, mult=0.5):
  return (("decoder/.*", 1.0), *((f, mult) for f in free), ("clip/.*", "frozen"))


def rules_arg(*free) -> str:
  return repr(rules(*free))


def size(tree) -> int:
  return sum(int(np.size(x)) for x in jax.tree.leaves(tree))


def fake_params():
  z = np.zeros((2, 3), np.float32)
  return {
    "clip": {"vision_model": {"encoder": {f"layers_{i}": {"mlp": {"kernel": z, "bias": z[0]}} for i in range(2)}}},
    "decoder": {"film_mul": {"kernel": z, "bias": z[0]}},
  }


def test_default_rules_are_the_decoder_only_split():
  """The default rules give today's split and plain AdamW's state: existing checkpoints keep restoring."""
  params = fake_params()
  labels = freeze.labels(params)
  trainable, frozen = freeze.split(params, labels)
  assert list(trainable) == ["decoder"] and list(frozen) == ["clip"]
  assert freeze.merge(frozen, trainable) == {**frozen, **trainable}
  optim = type("O", (), dict(learning_rate=1e-3, end_learning_rate=1e-4, warmup_steps=0, b1=0.9, b2=0.999))
  optim.weight_decay, optim.grad_clip_norm = 0.01, 0.0
  with_rules = steps.make_optimizer(optim, 10, freeze.split(labels, labels)[0]).init(trainable)
  plain = steps.make_optimizer(optim, 10).init(trainable)  # as before the rules existed
  assert jax.tree.structure(with_rules) == jax.tree.structure(plain)
  # A multiplier other than 1 adds optax.scale through multi_transform (no state of its own).
  mults = freeze.split(freeze.labels(params, (("decoder/.*", 0.1), ("clip/.*", "frozen"))), labels)[0]
  assert size(steps.make_optimizer(optim, 10, mults).init(trainable)) == size(plain)


def test_rule_errors_name_the_rule():
  params = fake_params()
  with pytest.raises(freeze.FreezeRuleError, match=r"the rule 'clip/text_model/\.\*' matches no parameter"):
    freeze.labels(params, (("decoder/.*", 1.0), ("clip/text_model/.*", 0.1), ("clip/.*", "frozen")))
  with pytest.raises(freeze.FreezeRuleError, match="no rule matches the parameter 'clip/vision_model/"):
    freeze.labels(params, (("decoder/.*", 1.0),))
  with pytest.raises(freeze.FreezeRuleError, match="expected a positive multiplier or 'frozen'"):
    freeze.labels(params, (("decoder/.*", "frozn"), ("clip/.*", "frozen")))
  with pytest.raises(freeze.FreezeRuleError, match="not a valid regex"):
    freeze.labels(params, (("decoder/(", 1.0), ("clip/.*", "frozen")))
  # First match wins; the summary counts tensors and parameters per rule.
  counted = freeze.summary(params, (("clip/.*/layers_1/.*", 0.1), ("clip/.*", "frozen"), (".*", 1.0)))
  assert [(n, p) for _, _, n, p in counted] == [(2, 9), (2, 9), (2, 9)]


@pytest.fixture(scope="module")
def tiny(training_root):
  from clipseg_jax.models.clipseg import ClipSegModel
  from clipseg_jax.train.recipe_model import initial_params, model_config
  from clipseg_jax.train.recipes import load_config

  cfg = load_config("synthetic", training_overrides(training_root, **{"optim.warmup_steps": 0}))
  config = model_config(cfg.model)
  return cfg, ClipSegModel(config), initial_params(config, cfg.model.clip, 0)


def batch(b=4, seed=0):
  rng = np.random.RandomState(seed)
  return {
    "pixels": rng.randint(0, 255, (b, 64, 64, 3)).astype(np.uint8),
    "mask": (rng.rand(b, 64, 64) > 0.5).astype(np.float32),
    "input_ids": np.tile(np.array([[49406, 320, 2368, 49407, 49407]], np.int32), (b, 1)),
    "attention_mask": np.ones((b, 5), np.int32),
    "support": rng.randn(b, 64, 64, 3).astype(np.float32),
    "text_weight": np.full((b,), 0.3, np.float32),
  }


def setup_step(tiny, rule_set):
  cfg, module, params = tiny
  labels = freeze.labels(params, rule_set)
  trainable, frozen = freeze.split(params, labels)
  tx = steps.make_optimizer(cfg.optim, 10, freeze.split(labels, labels)[0])
  state = steps.init_state(trainable, tx)
  return state, frozen, steps.make_stream_step(module, tx, visual_prompts=True)


def test_last_block_free_trains_only_it(tiny):
  """Only the last vision block and the decoder change, bit for bit the rest stays; optimiser state
  exists for the trainable leaves only (Adam's mu and nu)."""
  params = tiny[2]
  state, frozen, step = setup_step(tiny, rules(LAST))
  assert set(state.params["clip"]["vision_model"]["encoder"]) == {"layers_3"}
  assert size(state.opt_state) - 2 * size(state.params) <= 4
  before = jax.tree.map(np.array, params)
  jitted = jax.jit(step)
  for i in range(3):
    state, metrics = jitted(state, frozen, batch(seed=i))
  assert np.isfinite(metrics["loss"])
  after = freeze.merge(frozen, jax.device_get(state.params))
  flat = lambda t: {freeze.path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(t)[0]}
  old, new = flat(before), flat(after)
  assert old.keys() == new.keys()
  changed = {k for k in old if not np.array_equal(old[k], new[k])}
  trainable = {k for k in old if k.startswith(("decoder/", "clip/vision_model/encoder/layers_3/"))}
  assert changed <= trainable
  assert any(k.startswith("clip/") for k in changed) and any(k.startswith("decoder/") for k in changed)


@pytest.mark.slow  # four programs traced and lowered (~30 s here)
def test_backward_reaches_only_the_free_blocks(tiny):
  """The step's FLOPs: freeing the last block adds a backward pass through it alone; freeing the last two
  adds about as much again plus the gradient through the last one; freeing all of CLIP costs far more."""
  b = batch()
  flops = {}
  for name, rule_set in {
    "frozen": rules(),
    "last": rules(LAST),
    "last_two": rules(LAST_TWO),
    "all": (("decoder/.*", 1.0), ("clip/.*", 1.0)),
  }.items():
    state, frozen, step = setup_step(tiny, rule_set)
    flops[name] = steps.count_flops(step, state, frozen, b, compiled=False)  # the program as written
  one, two = flops["last"] - flops["frozen"], flops["last_two"] - flops["last"]
  assert one > 0 and two > 0.9 * one, flops
  assert flops["all"] - flops["frozen"] > 4 * one, flops


def test_cached_features_refused_when_clip_trains(training_root):
  from clipseg_jax.train.data import use_cache
  from clipseg_jax.train.recipes import load_config

  args = training_overrides(training_root, **{"optim.freeze_rules": rules_arg(LAST)})
  assert use_cache(load_config("synthetic", args)) is False  # "auto": the stream path
  forced = ml_collections.ConfigDict(load_config("synthetic", args).to_dict(), type_safe=False)
  forced.data.cache_features = True  # a config file's own setting (the recipe's field is a string)
  with pytest.raises(ValueError, match="cannot fine-tune CLIP"):
    use_cache(forced)
  assert use_cache(load_config("synthetic", training_overrides(training_root))) is True


def trained(workdir):
  """What the rules train: the decoder and the last vision block, as load_model(WORKDIR) gives them."""
  from clipseg_jax import load_model

  params = jax.tree.map(np.asarray, load_model(workdir).params)
  return {"decoder": params["decoder"], "block": params["clip"]["vision_model"]["encoder"]["layers_3"]}


@pytest.mark.slow
def test_meshes_agree_and_exports_carry_the_block(training_root, tmp_path):
  """With the last block trainable: meshes (8,1), (4,2) with CLIP FSDP-split and (1,1) agree norm-wise to
  1e-5; load_model(WORKDIR) carries the fine-tuned CLIP leaves and export_hf writes them;
  export_original refuses (its format holds the decoder only)."""
  import json

  from test_training import norm_rel_err, run_cli

  from clipseg_jax import load_model

  extra = {"optim.freeze_rules": rules_arg(LAST), "data.pcplus.visual_prompts": True}
  run_cli(training_root, tmp_path / "m11", **{"mesh.shape": "(1,1)", **extra})
  ref = trained(tmp_path / "m11")
  run_cli(training_root, tmp_path / "m81", devices=8, **{"mesh.shape": "(8,1)", **extra})
  run_cli(training_root, tmp_path / "m42", devices=8, **{"mesh.shape": "(4,2)", "mesh.clip_sharding": "fsdp", **extra})
  assert norm_rel_err(trained(tmp_path / "m81"), ref) <= 1e-5
  assert norm_rel_err(trained(tmp_path / "m42"), ref) <= 1e-5
  # The fine-tuned block moved away from the base CLIP; the block before it did not.
  from clipseg_jax.weights.backbone import clip_params

  model = load_model(tmp_path / "m11")
  base = jax.tree.map(np.asarray, clip_params(model.config, str(training_root / "clip")))
  enc, base_enc = model.params["clip"]["vision_model"]["encoder"], base["vision_model"]["encoder"]
  assert norm_rel_err(enc["layers_3"], base_enc["layers_3"]) > 1e-4
  assert norm_rel_err(enc["layers_2"], base_enc["layers_2"]) == 0
  recorded = json.loads((tmp_path / "m11" / "model" / "base.json").read_text())
  assert recorded["clip_trained"] and all(
    p.startswith("clip/vision_model/encoder/layers_3/") for p in recorded["clip_trained"]
  )
  exported = load_model(model.export_hf(tmp_path / "hf")).params
  assert norm_rel_err(exported["clip"]["vision_model"]["encoder"]["layers_3"], ref["block"]) == 0
  with pytest.raises(ValueError, match="decoder only"):
    model.export_original(tmp_path / "x.pth")


@pytest.mark.slow
@pytest.mark.nightly  # test_training.py kills and resumes each data path; this adds a trainable CLIP block
def test_resume_with_a_trainable_block_is_exact(training_root, tmp_path):
  """Kill mid-run, rerun the same command: ends where the uninterrupted run ends, the block's optimiser
  state included."""
  from test_training import kill_and_resume, norm_rel_err

  extra = {"optim.freeze_rules": rules_arg(LAST), "data.pcplus.visual_prompts": True, "total_steps": 30}
  killed, straight = kill_and_resume(training_root, tmp_path, **extra)
  assert norm_rel_err(trained(killed), trained(straight)) <= 1e-6


def test_leaves_the_loss_never_reads_are_named():
  """Text-only training runs the vision tower up to the deepest extracted block: later blocks and the
  pooled output's LayerNorm and projection get no gradient, only weight decay; the run warns of them."""
  from clipseg_jax.config import tiny_config
  from clipseg_jax.train.recipe_model import unreached

  config = tiny_config(extract_layers=(0, 1))  # 4 blocks, 2 read
  z = np.zeros(2)
  enc = {f"layers_{i}": {"mlp": {"bias": z}} for i in (1, 3)}
  trainable = {"clip": {"vision_model": {"encoder": enc, "post_layernorm": {"bias": z}}}, "decoder": {"b": z}}
  assert unreached(trainable, config, visual_prompts=False) == [
    "clip/vision_model/encoder/layers_3/mlp/bias",
    "clip/vision_model/post_layernorm/bias",
  ]
  assert unreached(trainable, config, visual_prompts=True) == []


def test_workdirs_from_before_the_rules_resume(tmp_path):
  """A run saved before optim.freeze_rules existed ran with the default rules: it resumes; other rules
  are another run."""
  import json

  from clipseg_jax.train.recipes import load_config, to_json
  from clipseg_jax.train.trainer import check_workdir

  saved = json.loads(to_json(load_config("synthetic")))
  del saved["optim"]["freeze_rules"], saved["model"]["transposed_convolution_kernels"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  check_workdir(load_config("synthetic"), tmp_path)
  with pytest.raises(ValueError, match="optim.freeze_rules"):
    check_workdir(load_config("synthetic", [f"--config.optim.freeze_rules={rules_arg(LAST)}"]), tmp_path)
