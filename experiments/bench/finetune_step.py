"""Cost of fine-tuning parts of CLIP (optim.freeze_rules): the train step's time and FLOPs with CLIP
frozen (the paper's recipe) against the last block, the last four blocks, the vision LayerNorms or all
of CLIP trainable; ViT-B/16 and ViT-L/14 shapes, random weights, text-conditioned batches on the device.

  python -m experiments.bench.finetune_step --gpu [--batch 128]     # bf16 on a GPU
  python -m experiments.bench.finetune_step --tiny                  # a smoke run on the CPU
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

from clipseg_jax.config import ClipSegConfig, VisionConfig, tiny_config
from clipseg_jax.models.clipseg import ClipSegModel, init_params
from clipseg_jax.train import freeze
from clipseg_jax.train import step as steps
from experiments.bench.train_step import batch_of

OPTIM = dict(learning_rate=1e-3, end_learning_rate=1e-4, warmup_steps=0, b1=0.9, b2=0.999, weight_decay=0.01)
L14 = VisionConfig(
  hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=14
)


def rule_sets(deepest: int) -> dict:
  """Rule sets to compare; `deepest`: the deepest extracted block (text-only steps run no block after it)."""
  head = (("decoder/.*", 1.0),)
  tail = (("clip/.*", "frozen"),)
  blocks = "|".join(map(str, range(deepest - 3, deepest + 1)))
  return {
    "frozen (default)": freeze.DEFAULT_RULES,
    f"block {deepest} x0.1": head + ((f"clip/vision_model/encoder/layers_{deepest}/.*", 0.1),) + tail,
    f"blocks {deepest - 3}-{deepest} x0.1": head + ((f"clip/vision_model/encoder/layers_({blocks})/.*", 0.1),) + tail,
    "vision LayerNorms x0.1": head + (("clip/vision_model/.*(layer_norm|layrnorm).*", 0.1),) + tail,
    "all of CLIP x0.1": head + (("clip/.*", 0.1),),
  }


def measure(config, size, n, dtype, steps_n, only=None):
  params = jax.jit(lambda k: init_params(config, k))(jax.random.PRNGKey(0))
  module = ClipSegModel(config, dtype)
  batch = jax.device_put(batch_of(n, size, np.random.RandomState(0)))
  optim = types.SimpleNamespace(**OPTIM, grad_clip_norm=0.0)  # what make_optimizer reads
  for i, (name, rules) in enumerate(rule_sets(max(config.extract_layers)).items()):
    if only is not None and i not in only:
      continue
    labels = freeze.labels(params, rules)
    trainable, frozen = freeze.split(params, labels)
    tx = steps.make_optimizer(optim, 1000, freeze.split(labels, labels)[0])
    state = steps.init_state(jax.tree.map(jnp.copy, trainable), tx)
    step = steps.make_stream_step(module, tx, visual_prompts=False)
    flops = steps.count_flops(step, state, frozen, batch, compiled=False)  # NaN on GPUs without a count
    fn = jax.jit(step, donate_argnums=(0,))
    state, m = fn(state, frozen, batch)  # compile
    jax.block_until_ready(m["loss"])
    t0 = time.perf_counter()
    for _ in range(steps_n):
      state, m = fn(state, frozen, batch)
    jax.block_until_ready(m["loss"])
    dt = (time.perf_counter() - t0) / steps_n
    n_train = sum(int(np.size(x)) for x in jax.tree.leaves(trainable))
    print(
      f"  {name:24s} {n_train / 1e6:8.2f} M trainable  {dt * 1e3:8.1f} ms/step  {n / dt:7.0f} images/s"
      f"  {flops / 1e12:7.2f} TFLOP/step  loss {float(m['loss']):.4f}",
      flush=True,
    )
    del state, fn


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--gpu", action="store_true")
  p.add_argument("--tiny", action="store_true")
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--steps", type=int, default=10)
  args = p.parse_args()
  if args.tiny:
    config = dataclasses.replace(tiny_config(), extract_layers=(1, 2, 3))
    print("tiny, batch 4 at 64 px, float32")
    return measure(config, 64, 4, None, 2)
  dtype = jnp.bfloat16 if args.gpu else None
  kind = jax.devices()[0].device_kind
  b16 = ClipSegConfig()
  print(f"ViT-B/16 at 352 px, batch {args.batch}, {'bf16' if dtype else 'f32'} compute, {kind}")
  measure(b16, 352, args.batch, dtype, args.steps)
  l14 = dataclasses.replace(
    b16, vision_config=L14, projection_dim=768, extract_layers=(7, 15, 19), transposed_convolution_kernels=None
  )
  l14 = dataclasses.replace(
    l14, text_config=dataclasses.replace(b16.text_config, hidden_size=768, num_attention_heads=12)
  )
  print(f"ViT-L/14 at 336 px, batch {args.batch // 2}, extract layers (7, 15, 19)")
  measure(l14, 336, args.batch // 2, dtype, args.steps, only=(0, 1, 4))


if __name__ == "__main__":
  main()
