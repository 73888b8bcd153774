"""Class lists and folds of the evaluation datasets, read from `input_pipeline/data/`."""

from __future__ import annotations

import functools
import json
from pathlib import Path

DATA = Path(__file__).parent / "data"


@functools.cache
def _load(name: str):
  return json.loads((DATA / name).read_text())


def pascal_classes() -> list[str]:
  """The 20 PASCAL VOC classes, index i+1 in the label maps (0 is background)."""
  return list(_load("pascal_classes.json")["classes"])


def prompt_names() -> dict[str, str]:
  """Natural names used as prompts for VOC's run-together class names (e.g. 'pottedplant')."""
  return dict(_load("pascal_classes.json")["prompt_names"])


def pascal_synonyms() -> dict[str, list[str]]:
  """Words that name each PASCAL class or a hyponym of it (for held-out filtering)."""
  return dict(_load("pascal_classes.json")["synonyms"])


def pascal_zero_shot_unseen(n: int) -> list[str]:
  """Unseen classes of the zero-shot setting unseen-n (n in 2, 4, 6, 8, 10): the first n/2 pairs."""
  pairs = _load("pascal_classes.json")["zero_shot_pairs"]
  if n not in range(2, 2 * len(pairs) + 1, 2):
    raise ValueError(f"unseen-{n} is not defined; use one of {list(range(2, 2 * len(pairs) + 1, 2))}")
  return [c for pair in pairs[: n // 2] for c in pair]


def joem_class_names() -> list[str]:
  """The 21 prompts of the original's zero-shot evaluation, index = label value: JoEm's `VOC` list as
  written there ('background', 'airplane', ..., 'diningtable', 'pottedplant', 'tvmonitor')."""
  return list(_load("joem_voc.json")["classes"])


def joem_unseen_idx(n: int) -> list[int]:
  """Label values JoEm's `get_unseen_idx(n)` holds out (the original's score.py passes n = the training
  config's `remove_classes[1]`). n = 2, 4, 6, 8, 10: the first n/2 zero-shot pairs; n = 5 is SPNet's
  split (pottedplant, sheep, sofa, train, tvmonitor); n = 1: tvmonitor."""
  unseen = _load("joem_voc.json")["unseen"]
  if str(n) not in unseen:
    raise ValueError(f"JoEm defines no unseen-{n} split; use one of {', '.join(unseen)}")
  return list(unseen[str(n)])


def joem_seen_idx(n: int) -> list[int]:
  """JoEm's `get_seen_idx(n)`: every other label value, background (0) included."""
  unseen = set(joem_unseen_idx(n))
  return [c for c in range(len(joem_class_names())) if c not in unseen]


def pascal5i_fold(fold: int) -> list[int]:
  """PASCAL-5i: fold i tests classes 5i+1 .. 5i+5 (1-based VOC indices)."""
  if fold not in range(4):
    raise ValueError(f"PASCAL-5i fold must be 0-3, got {fold}")
  return list(range(5 * fold + 1, 5 * fold + 6))


def coco20i_fold(fold: int) -> list[int]:
  """COCO-20i: fold i tests classes 4k + i + 1, k = 0..19 (1-based contiguous COCO indices),
  the interleaved split used by the one-shot literature the paper compares with."""
  if fold not in range(4):
    raise ValueError(f"COCO-20i fold must be 0-3, got {fold}")
  return [4 * k + fold + 1 for k in range(20)]
