"""Decoder dropout: where torch's nn.TransformerEncoderLayer (the original's decoder block, dropout 0.1 by
default and on while it trained) applies it, how the train step draws it, and that inference never does."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clipseg_jax.config import tiny_config
from clipseg_jax.models.clipseg import ClipSegModel
from clipseg_jax.models.layers import MLP, Attention, DecoderLayer

B, T, D, HEADS, FFN, P = 2, 5, 16, 4, 32, 0.1


def torch_layer(torch, params):
  """torch's layer (batch_first: the same arithmetic as the original's sequence-first one) with our weights."""
  layer = torch.nn.TransformerEncoderLayer(D, HEADS, FFN, dropout=P, batch_first=True)
  t = lambda a: torch.tensor(np.asarray(a))
  a, m = params["self_attn"], params["mlp"]
  with torch.no_grad():
    layer.self_attn.in_proj_weight.copy_(t(np.concatenate([a[n]["kernel"].T for n in ("q_proj", "k_proj", "v_proj")])))
    layer.self_attn.in_proj_bias.copy_(t(np.concatenate([a[n]["bias"] for n in ("q_proj", "k_proj", "v_proj")])))
    layer.self_attn.out_proj.weight.copy_(t(a["out_proj"]["kernel"].T))
    layer.self_attn.out_proj.bias.copy_(t(a["out_proj"]["bias"]))
    layer.linear1.weight.copy_(t(m["fc1"]["kernel"].T))
    layer.linear1.bias.copy_(t(m["fc1"]["bias"]))
    layer.linear2.weight.copy_(t(m["fc2"]["kernel"].T))
    layer.linear2.bias.copy_(t(m["fc2"]["bias"]))
    for ours, theirs in (("layer_norm1", layer.norm1), ("layer_norm2", layer.norm2)):
      theirs.weight.copy_(t(params[ours]["scale"]))
      theirs.bias.copy_(t(params[ours]["bias"]))
  return layer


def ours_and_input(seed=0):
  layer = DecoderLayer(HEADS, FFN, 1e-5, dropout_rate=P)
  x = jax.random.normal(jax.random.key(seed), (B, T, D))
  params = layer.init(jax.random.key(1), x)["params"]
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(2), p.shape), params)  # non-trivial
  return layer, params, x


def which(context) -> str:
  """Our dropout sites, named as torch's: attention probabilities, dropout1, dropout (FFN hidden), dropout2."""
  parent = context.module.parent
  if isinstance(parent, Attention):
    return "attn"
  if isinstance(parent, MLP):
    return "dropout"
  return {"Dropout_0": "dropout1", "Dropout_1": "dropout2"}[context.module.name]


def test_eval_mode_equals_torch_eval(torch):
  layer, params, x = ours_and_input()
  ref = torch_layer(torch, params).eval()
  with torch.no_grad():
    want = ref(torch.tensor(np.asarray(x))).numpy()
  np.testing.assert_allclose(layer.apply({"params": params}, x), want, atol=2e-5)
  # deterministic (the default): dropout never applies, whatever the rate
  np.testing.assert_array_equal(
    layer.apply({"params": params}, x), DecoderLayer(HEADS, FFN, 1e-5).apply({"params": params}, x)
  )


def test_train_mode_equals_torch_train_with_the_same_masks(torch, monkeypatch):
  """torch's train-mode layer and ours, each dropout site fed the same Bernoulli mask: equal outputs, so
  dropout sits where torch puts it (attention probabilities, both residual branches, the FFN hidden layer)."""
  layer, params, x = ours_and_input()
  rng = np.random.default_rng(0)
  shapes = {"attn": (B, HEADS, T, T), "dropout1": (B, T, D), "dropout": (B, T, FFN), "dropout2": (B, T, D)}
  masks = {k: (rng.random(s) >= P).astype(np.float32) for k, s in shapes.items()}
  seen = []

  def forced(next_fun, args, kwargs, context):
    if not isinstance(context.module, nn.Dropout) or context.method_name != "__call__":
      return next_fun(*args, **kwargs)
    site = which(context)
    seen.append(site)
    return args[0] * masks[site] / (1 - P)

  with nn.intercept_methods(forced):
    ours = layer.apply({"params": params}, x, deterministic=False, rngs={"dropout": jax.random.key(3)})
  assert sorted(seen) == sorted(shapes)

  ref = torch_layer(torch, params).train()
  mask = lambda k: torch.tensor(masks[k])

  class Forced(torch.nn.Module):
    def __init__(self, key):
      super().__init__()
      self.key = key

    def forward(self, h):
      return h * mask(self.key) / (1 - P)

  ref.dropout1, ref.dropout, ref.dropout2 = Forced("dropout1"), Forced("dropout"), Forced("dropout2")
  # torch drops attention probabilities inside F.multi_head_attention_forward (its explicit path: need_weights)
  mha_forward = type(ref.self_attn).forward
  ref.self_attn.forward = lambda *a, **k: mha_forward(ref.self_attn, *a, **{**k, "need_weights": True})
  calls = []

  def attn_dropout(h, p=0.5, training=True, inplace=False):
    calls.append((tuple(h.shape), p, training))
    return h * mask("attn").reshape(B * HEADS, T, T) / (1 - p)

  monkeypatch.setattr(torch.nn.functional, "dropout", attn_dropout)
  with torch.no_grad():
    want = ref(torch.tensor(np.asarray(x))).numpy()
  assert calls == [((B * HEADS, T, T), P, True)]
  np.testing.assert_allclose(ours, want, atol=2e-5)


def test_train_mode_drops_at_the_rate_and_is_reproducible():
  layer, params, x = ours_and_input()
  run = jax.jit(lambda key: layer.apply({"params": params}, x, deterministic=False, rngs={"dropout": key}))
  np.testing.assert_array_equal(run(jax.random.key(5)), run(jax.random.key(5)))
  assert not np.allclose(run(jax.random.key(5)), run(jax.random.key(6)))
  assert not np.allclose(run(jax.random.key(5)), layer.apply({"params": params}, x))
  kept = []

  def count(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, nn.Dropout):
      nonzero = args[0] != 0
      kept.append((jnp.sum((out != 0) & nonzero), jnp.sum(nonzero)))
    return out

  big = jax.random.normal(jax.random.key(0), (16, T, D))
  with nn.intercept_methods(count):
    layer.apply({"params": params}, big, deterministic=False, rngs={"dropout": jax.random.key(7)})
  frac = float(sum(k for k, _ in kept) / sum(n for _, n in kept))
  assert abs(frac - (1 - P)) < 0.015, frac  # 6720 draws: 4 standard deviations


def test_train_step_uses_dropout_by_step_and_inference_never():
  """The step's key is a function of (seed, step): a resumed run redraws the same masks. The model
  built for inference (ClipSegModel without deterministic=False) is unaffected by the rate."""
  from clipseg_jax.train import step as steps

  config = tiny_config()
  acts = [jax.random.normal(jax.random.key(i), (2, 17, 32)) for i in range(3)]
  cond = jax.random.normal(jax.random.key(9), (2, 24))
  params = ClipSegModel(config).init(jax.random.key(0), acts, cond, method=ClipSegModel.decode_activations)["params"]
  plain, dropped = ClipSegModel(config), ClipSegModel(config, decoder_dropout=P)
  assert steps.dropout_rng(plain, 0, 3) is None
  k = steps.dropout_rng(dropped, 0, jnp.int32(3))
  np.testing.assert_array_equal(jax.random.key_data(k), jax.random.key_data(steps.dropout_rng(dropped, 0, 3)))
  assert not np.array_equal(jax.random.key_data(k), jax.random.key_data(steps.dropout_rng(dropped, 0, 4)))
  infer = lambda m: jax.jit(lambda p: m.apply({"params": p}, acts, cond, method=ClipSegModel.decode_activations))(
    params
  )
  np.testing.assert_array_equal(infer(plain), infer(dropped))
  decode = jax.jit(lambda p, key: steps.decode(dropped, p, acts, cond, key))
  train = decode(params, k)
  assert not np.allclose(train, infer(plain))
  np.testing.assert_array_equal(train, decode(params, k))


@pytest.mark.parametrize("recipe,rate", [("rd64_uni", 0.1), ("pascal5i", 0.1), ("synthetic", 0.0)])
def test_recipes_set_the_dropout(recipe, rate):
  from clipseg_jax.train.recipes import load_config

  assert load_config(recipe).model.decoder_dropout == rate


def test_workdirs_from_before_these_keys_resume(tmp_path):
  """Runs saved before decoder_dropout, reduce2_dim, heldout_rule and only_visual existed ran without them
  (no dropout, no baseline MLP, the synonym rule, all phrases): such a synthetic run resumes."""
  import json

  from clipseg_jax.train.recipes import load_config, to_json
  from clipseg_jax.train.trainer import check_workdir

  saved = json.loads(to_json(load_config("synthetic")))
  del saved["model"]["decoder_dropout"], saved["model"]["reduce2_dim"]
  del saved["data"]["heldout_rule"], saved["data"]["only_visual"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  check_workdir(load_config("synthetic"), tmp_path)
  with pytest.raises(ValueError, match="model.decoder_dropout"):
    check_workdir(load_config("synthetic", ["--config.model.decoder_dropout=0.1"]), tmp_path)
  saved["data"]["heldout_classes"] = ["cat"]  # held out by the old rule: the new one is another run
  (tmp_path / "config.json").write_text(json.dumps(saved))
  with pytest.raises(ValueError, match="data.heldout_rule"):
    check_workdir(load_config("synthetic", ["--config.data.heldout_classes=('cat',)"]), tmp_path)
