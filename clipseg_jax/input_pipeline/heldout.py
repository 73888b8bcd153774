"""Held-out class filtering for zero-/one-shot training: phrases naming a held-out PASCAL class (or
one of its listed synonyms and hyponyms, `data/pascal_classes.json`) are removed."""

from __future__ import annotations

import re

from clipseg_jax.input_pipeline.classes import pascal_synonyms


def heldout_words(classes) -> list[str]:
  synonyms = pascal_synonyms()
  unknown = [c for c in classes if c not in synonyms]
  if unknown:
    raise ValueError(f"unknown PASCAL class(es) {unknown}; known: {', '.join(synonyms)}")
  return sorted({w for c in classes for w in synonyms[c]})


def make_filter(classes):
  """-> predicate(phrase) that is False for phrases naming any of `classes` (whole words)."""
  words = heldout_words(classes)
  if not words:
    return lambda phrase: True
  pattern = re.compile(
    r"\b(" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + r")\b", re.IGNORECASE
  )
  return lambda phrase: pattern.search(phrase) is None
