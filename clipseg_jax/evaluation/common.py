"""What every evaluation protocol shares: its options, the numbers it reports, and how it walks a set
(progress, `--limit`, each host's share)."""

from __future__ import annotations

import dataclasses

import numpy as np
from tqdm import tqdm

from clipseg_jax.metrics import FIXED_THRESHOLDS, Accumulator
from clipseg_jax.metrics.binary import at_threshold

# Zero-shot: JoEm's unseen-n splits reported by default (evaluation/zero_shot.py says which the paper's are).
DEFAULT_SPLITS = (2, 4, 5, 6, 8, 10)
N_EXAMPLES = 6  # predictions kept for the picture


@dataclasses.dataclass
class EvalOptions:
  data_dir: str
  dataset: str | None = None  # override the task's dataset name (e.g. synthetic/tiny)
  split: str | None = None
  limit: int | None = None  # evaluate only the first N images / episodes
  threshold: float | None = None  # fix the threshold instead of reporting the best
  fold: int | None = None  # one-shot folds (default: all four)
  episodes: int = 1000  # one-shot episodes per fold
  seed: int = 0
  background_scale: float = 3.0  # zero-shot: the background prompt's probability is scaled by this
  unseen: tuple[int, ...] = DEFAULT_SPLITS  # zero-shot: JoEm's unseen-n splits to report
  templates: tuple[str, ...] | None = None  # a prompt ensemble for text prompts (None: the raw prompt)
  progress: bool = True


def binary_numbers(acc: Accumulator, threshold: float | None) -> dict:
  """Curves plus the values at the best (or fixed) threshold and at 0.1/0.2/0.3/0.5."""
  r = acc.result()
  out = {"curves": {k: np.asarray(v).tolist() for k, v in r.items() if k != "ap"}, "ap": r["ap"]}
  for name in ("miou", "iou_fg", "iou_bin"):
    t, v = at_threshold(r, name, threshold)
    out[name] = {"value": v, "threshold": t}
    out[name]["fixed"] = {str(ft): at_threshold(r, name, ft)[1] for ft in FIXED_THRESHOLDS}
  return out


def average_numbers(parts: list[dict]) -> dict:
  """The mean of several `binary_numbers` results (e.g. one per fold, as the paper averages folds): each
  metric's value and fixed-threshold values averaged, `threshold` None (the folds' best ones differ),
  and the mean AP."""
  out = {"ap": float(np.mean([p["ap"] for p in parts]))}
  for name in ("miou", "iou_fg", "iou_bin"):
    fixed = {t: float(np.mean([p[name]["fixed"][t] for p in parts])) for t in parts[0][name]["fixed"]}
    out[name] = {"value": float(np.mean([p[name]["value"] for p in parts])), "threshold": None, "fixed": fixed}
  return out


def progress(it, total, desc, opts):
  return tqdm(it, total=total, desc=desc, unit="img", disable=not opts.progress)


def limit(n, opts):
  return n if opts.limit is None else min(n, opts.limit)


def mine(i: int) -> bool:
  """In a multi-host run each process scores every process_count-th item; the accumulators' allreduce
  then sums the parts (one process alone would wait forever in that allreduce)."""
  import jax

  return i % jax.process_count() == jax.process_index()


def nan_to_none(values):
  return [None if not np.isfinite(v) else float(v) for v in values]
