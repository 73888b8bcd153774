"""Training-step throughput: full ViT-B/16 CLIPSeg at 352 px, text-conditioned batches already in
memory, CLIP frozen, AdamW on the decoder. clipseg-jax's jitted step against a PyTorch reference step
(transformers' model, CLIP with requires_grad=False under no_grad, AdamW on the decoder, BCE) measured
side by side in one run. Target on this CPU: at least 1.3x.

  python -m experiments.bench.train_step [--batch 4] [--steps 3]
  python -m experiments.bench.train_step --gpu [--batch 256]   # bf16 on a GPU: images/s and MFU
  python -m experiments.bench.train_step --gpu --end-to-end [--batch 256] [--workers 15]
      # training fed by the real PhraseCut+ loader (PhraseCut-shaped JPEGs, visual supports, grain
      # workers, prompt engineering on the device) against the same step on a batch already on the
      # device, in one run; on CPU with tiny sizes: --end-to-end --size 64 --batch 8 --steps 3
"""

from __future__ import annotations

import argparse
import statistics

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench.common import describe, interleaved, models, speedups, timeit

# Peak dense bf16 FLOP/s for the model-FLOP utilisation figure.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def batch_of(n, size, rng):
  return {
    "pixels": rng.randint(0, 255, (n, size, size, 3)).astype(np.uint8),
    "mask": (rng.rand(n, size, size) > 0.5).astype(np.float32),
    "input_ids": np.tile(np.array([[49406, 320, 1125, 539, 320, 2368, 49407, 49407]], np.int32), (n, 1)),
    "attention_mask": np.tile(np.array([[1] * 7 + [0]], np.int32), (n, 1)),
    "support": np.zeros((n, size, size, 3), np.uint8),
    "text_weight": np.ones((n,), np.float32),
  }


def jax_step(model, dtype=None):
  import ml_collections

  from clipseg_jax.models.clipseg import ClipSegModel
  from clipseg_jax.train import freeze
  from clipseg_jax.train import step as steps

  optim = ml_collections.ConfigDict(
    dict(
      learning_rate=1e-3,
      end_learning_rate=1e-4,
      warmup_steps=0,
      b1=0.9,
      b2=0.999,
      weight_decay=0.01,
      grad_clip_norm=0.0,
    )
  )
  tx = steps.make_optimizer(optim, 20_000)
  trainable, frozen = freeze.split(model.params, freeze.labels(model.params))
  state = steps.init_state(jax.tree.map(jnp.copy, trainable), tx)  # donated: leave the model's own
  fn = jax.jit(steps.make_stream_step(ClipSegModel(model.config, dtype), tx, visual_prompts=False), donate_argnums=(0,))
  return fn, state, frozen


def jax_runner(fn, state, frozen, batch):
  """One call = one jitted step on `batch`, threading the donated state through."""
  holder = {"state": state}

  def run():
    holder["state"], metrics = fn(holder["state"], frozen, batch)
    return jax.block_until_ready(metrics["loss"])

  return run


def torch_step(model, batch, device="cpu", bf16=False):
  """The PyTorch reference step: CLIP frozen, AdamW on the decoder, BCE; inputs already on `device`."""
  import contextlib

  import torch

  model.to(device)
  for p in model.clip.parameters():
    p.requires_grad_(False)
  opt = torch.optim.AdamW(model.decoder.parameters(), lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01)
  mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
  std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)
  to = lambda a: torch.from_numpy(a).to(device)
  pixels = (to(batch["pixels"]).permute(0, 3, 1, 2).float() / 255 - mean) / std
  ids, mask = to(batch["input_ids"]).long(), to(batch["attention_mask"]).long()
  target = to(batch["mask"])
  autocast = torch.autocast(device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

  def step():
    with torch.enable_grad():
      opt.zero_grad()
      with autocast:
        logits = model(pixel_values=pixels, input_ids=ids, attention_mask=mask).logits
      loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), target)
      loss.backward()
      opt.step()
    return loss.item()  # waits for the device

  return step


def step_flops(n: int, size: int) -> float:
  """FLOPs of the bf16 training step on `n` images, from the lowered program, on abstract shapes."""
  from clipseg_jax.api import ClipSeg
  from clipseg_jax.config import ClipSegConfig
  from clipseg_jax.models.clipseg import init_params
  from clipseg_jax.train import step as steps

  config = ClipSegConfig(use_complex_transposed_convolution=False)
  abstract = lambda t: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), t)
  fn, state, frozen = jax_step(ClipSeg(config, init_params(config)), jnp.bfloat16)
  batch = batch_of(n, size, np.random.RandomState(0))
  return steps.count_flops(fn, abstract(state), abstract(frozen), abstract(batch), compiled=False)


def cpu_step_flops(n: int, size: int) -> float:
  """`step_flops` counted by XLA:CPU in a child process (the count does not depend on the device)."""
  import os
  import subprocess
  import sys

  code = f"from experiments.bench.train_step import step_flops; print(step_flops({n}, {size}))"
  out = subprocess.run(
    [sys.executable, "-c", code], env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, check=True
  )
  return float(out.stdout.split()[-1])


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--batch", type=int, default=None)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--size", type=int, default=352)
  p.add_argument("--gpu", action="store_true")
  p.add_argument("--end-to-end", action="store_true", help="the step fed by the real loader vs the step alone")
  p.add_argument("--workers", type=int, default=None, help="grain workers for --end-to-end (default: CPUs - 1)")
  p.add_argument("--path", choices=["host", "device"], default="device", help="--end-to-end: prompt engineering where")
  args = p.parse_args()
  rng = np.random.RandomState(0)
  if args.end_to_end:
    return end_to_end(args)
  if args.gpu:
    return gpu(args, rng)
  n = args.batch or 4
  ours, theirs = models(refined=False)
  batch = batch_of(n, args.size, rng)
  t = interleaved({"ours": jax_runner(*jax_step(ours), batch), "ref": torch_step(theirs, batch)}, args.steps)
  t_ours, t_ref = statistics.median(t["ours"]), statistics.median(t["ref"])
  print(f"train step, batch {n} at {args.size} px, float32, this CPU (median of {args.steps} steps each, taking turns)")
  print(f"  clipseg-jax   {n / t_ours:6.2f} images/s  ({t_ours:.2f} s/step)")
  print(f"  PyTorch ref   {n / t_ref:6.2f} images/s  ({t_ref:.2f} s/step)")
  print(f"  speed-up      {describe(speedups(t))}   (target >= 1.3x)")


def gpu(args, rng):
  """bf16 on one GPU, batches already on the device: ours against the PyTorch reference (autocast
  bf16, transformers' default attention), with model FLOP utilisation from JAX's FLOP count of the
  lowered step (the compiled count on GPUs misses the matmuls handed to cuBLAS)."""
  import torch

  from clipseg_jax.train import step as steps

  n = args.batch or 256
  ours, theirs = models(refined=False)
  batch = batch_of(n, args.size, rng)
  fn, state, frozen = jax_step(ours, jnp.bfloat16)
  on_device = jax.device_put(batch)
  flops = steps.count_flops(fn, state, frozen, on_device, compiled=False)
  if np.isnan(flops):  # this GPU plugin gives no count before compiling: XLA:CPU counts the same step
    flops = cpu_step_flops(n, args.size)
  t_ours = timeit(jax_runner(fn, state, frozen, on_device), args.steps)
  t_ref = timeit(torch_step(theirs, batch, "cuda" if torch.cuda.is_available() else "cpu", bf16=True), args.steps)
  kind = jax.devices()[0].device_kind
  peak = next((v for k, v in PEAK_BF16.items() if k in kind), np.nan)
  print(f"train step on {kind}, batch {n} at {args.size} px, bf16 compute, batch on the device")
  for name, t in (("clipseg-jax", t_ours), ("PyTorch ref", t_ref)):
    print(
      f"  {name:12s} {n / t:7.0f} images/s  {t * 1e3:7.1f} ms/step  {flops / t / 1e12:6.1f} TFLOP/s"
      f"  MFU {flops / t / peak:6.1%}"
    )
  print(f"  speed-up     {t_ref / t_ours:7.2f}x   (target on one H100: 2000 images/s)")


def end_to_end(args):
  """Images/s of training fed by the PhraseCut+ loader (grain workers decoding PhraseCut-shaped JPEGs,
  supports and prompt engineering as configured) against the same jitted step on one batch already on
  the device, in one run; MFU of both from the lowered step's FLOP count. bf16 with --gpu, else f32."""
  import os
  import time

  from clipseg_jax.api import ClipSeg
  from clipseg_jax.config import ClipSegConfig
  from clipseg_jax.input_pipeline import device
  from clipseg_jax.input_pipeline.loader import make_loader
  from clipseg_jax.input_pipeline.pcplus import PCPlusOptions
  from clipseg_jax.models.clipseg import ClipSegModel, init_params
  from clipseg_jax.train import step as steps
  from experiments.bench.pcplus_throughput import JpegSource

  n, dtype = args.batch or (256 if args.gpu else 8), jnp.bfloat16 if args.gpu else jnp.float32
  workers = (os.cpu_count() or 2) - 1 if args.workers is None else args.workers
  opts = PCPlusOptions(image_size=args.size, device_augment=args.path == "device")
  config = ClipSegConfig(use_complex_transposed_convolution=False)
  model = ClipSeg(config, init_params(config))
  _, state, frozen = jax_step(model, dtype)
  tx = steps.make_optimizer(_optim(), 20_000)
  stream = steps.make_stream_step(ClipSegModel(config, dtype), tx, visual_prompts=True)
  if opts.device_augment:
    fn = lambda state, frozen, batch: stream(state, frozen, device.finish(batch, opts.prompt_mode, opts.image_size))
  else:
    fn = stream
  loader = make_loader(JpegSource(n_images=256), opts, batch_size=n, seed=0, worker_count=workers)
  it = iter(loader)
  first = jax.device_put(next(it))
  flops = steps.count_flops(fn, state, frozen, first, compiled=False)
  jitted = jax.jit(fn, donate_argnums=(0,))
  holder = {"state": state}

  def run(batch):
    holder["state"], metrics = jitted(holder["state"], frozen, batch)
    return metrics

  jax.block_until_ready(run(first))  # compile
  t_step = timeit(lambda: jax.block_until_ready(run(first)["loss"]), args.steps)
  jax.block_until_ready(run(jax.device_put(next(it))))  # the loader's buffers filled once
  start = time.perf_counter()
  for _ in range(args.steps):
    metrics = run(jax.device_put(next(it)))  # dispatch is asynchronous: the next batch loads meanwhile
  jax.block_until_ready(metrics["loss"])
  t_e2e = (time.perf_counter() - start) / args.steps
  if hasattr(it, "close"):
    it.close()
  kind = jax.devices()[0].device_kind
  peak = next((v for k, v in PEAK_BF16.items() if k in kind), np.nan) if args.gpu else np.nan
  print(
    f"end to end on {kind}, batch {n} at {args.size} px, {jnp.dtype(dtype).name} compute, visual supports, "
    f"{args.path} prompt engineering, {workers} grain worker(s), {args.steps} steps"
  )
  for name, t in (("step alone", t_step), ("end to end", t_e2e)):
    mfu = f"MFU {flops / t / peak:6.1%}" if np.isfinite(peak) and np.isfinite(flops) else "MFU n/a"
    print(f"  {name:11s} {n / t:8.1f} images/s  {t * 1e3:8.1f} ms/step  {mfu}")
  print(f"  end to end / step alone: {t_step / t_e2e:.1%}   (target on a GPU host: >= 90%)")


def _optim():
  import ml_collections

  keys = dict(learning_rate=1e-3, end_learning_rate=1e-4, warmup_steps=0, b1=0.9, b2=0.999, weight_decay=0.01)
  return ml_collections.ConfigDict(dict(keys, grad_clip_norm=0.0))


if __name__ == "__main__":
  main()
