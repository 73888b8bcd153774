"""Shared set-up for the benchmarks: one random-weight ViT-B/16 CLIPSeg in both frameworks."""

from __future__ import annotations

import statistics
import tempfile
import time


def models(refined: bool = True, seed: int = 0, attn_implementation: str | None = None):
  """(clipseg_jax ClipSeg, transformers model with `attn_implementation`, by default its default),
  the same random weights."""
  import jax
  import torch
  from transformers import CLIPSegForImageSegmentation

  from clipseg_jax import load_model
  from clipseg_jax.api import ClipSeg
  from clipseg_jax.config import ClipSegConfig
  from clipseg_jax.models.clipseg import init_params

  config = ClipSegConfig(use_complex_transposed_convolution=refined)
  directory = tempfile.mkdtemp(prefix="clipseg_bench_")
  ClipSeg(config, init_params(config, jax.random.PRNGKey(seed))).export_hf(directory)
  torch.set_grad_enabled(False)
  return load_model(directory), CLIPSegForImageSegmentation.from_pretrained(
    directory, attn_implementation=attn_implementation
  ).eval()


def interleaved(fns: dict, repeats: int = 3, warmup: int = 1) -> dict[str, list[float]]:
  """Wall times in seconds of each `fn()` per round, the calls taking turns (a, b, a, b, ...) after
  `warmup` calls each. This machine's speed drifts by 2x within a minute (other tenants), so
  contenders are compared round by round (`speedups`), never across separate spells."""
  for fn in fns.values():
    for _ in range(warmup):
      fn()
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return times


def speedups(times: dict[str, list[float]], ours: str = "ours", ref: str = "ref") -> list[float]:
  """ref's time / ours's time, round by round (sorted)."""
  return sorted(r / o for o, r in zip(times[ours], times[ref]))


def describe(speedup: list[float]) -> str:
  """'1.29x (1.10-1.41 over 5 rounds)': the median speed-up and its range."""
  return f"{statistics.median(speedup):.2f}x ({speedup[0]:.2f}-{speedup[-1]:.2f} over {len(speedup)} rounds)"


def timeit(fn, repeats: int = 3, warmup: int = 1) -> float:
  """Median wall time of `fn()` in seconds after `warmup` calls."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)
