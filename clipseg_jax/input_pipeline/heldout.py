"""Held-out class filtering for zero-/one-shot training: phrases naming a held-out PASCAL class are removed.

Two rules (`data.heldout_rule`):
- "wordnet" (the original's, timojl/clipseg `datasets/phrasecut.py` `remove_classes`): the lemma names of the
  class's WordNet synset and all its hyponyms; a phrase is removed when it holds a multi-word lemma as a
  substring, or when one of its words (split on ' ') lemmatizes (NLTK's noun lemmatizer) to a single-word
  lemma. Shipped as word lists (`data/pascal_hyponyms.json`, made by
  experiments/scripts/make_hyponym_lists.py from WordNet 3.0), so no WordNet is needed at run time.
- "synonyms": our earlier hand-made list (`data/pascal_classes.json`), whole words, case-insensitive.

Which classes: `fold_classes` (PASCAL-5i training, `remove_classes: [pas5i, i]`) and `zero_shot_classes`
(`remove_classes: [zs, n]`). Also `repeated_phrases`, the original's `only_visual` sample filter.
"""

from __future__ import annotations

import collections
import functools
import json
import re
from pathlib import Path

from clipseg_jax.input_pipeline.classes import pascal5i_fold, pascal_classes, pascal_synonyms

HYPONYMS = Path(__file__).parent / "data" / "pascal_hyponyms.json"
RULES = ("wordnet", "synonyms")
# The original's PASCAL_VOC_CLASSES_ZS (commented out in its datasets/pascal_zeroshot.py, which score.py and
# phrasecut.py still import): pairs of synsets, named here by their VOC classes.
ZERO_SHOT_PAIRS = (("cow", "motorbike"), ("aeroplane", "sofa"), ("cat", "tvmonitor"), ("train", "bottle"))
ZERO_SHOT_PAIRS += (("chair", "pottedplant"),)


def _check(classes):
  known = pascal_classes()
  unknown = [c for c in classes if c not in known]
  if unknown:
    raise ValueError(f"unknown PASCAL class(es) {unknown}; known: {', '.join(known)}")


def fold_classes(fold: int) -> list[str]:
  """The classes PASCAL-5i fold `fold` tests, which its training removes (the original's `[pas5i, fold]`
  avoids every class whose label is not in `PASCAL_5I_CLASS_IDS[fold]`: labels 5 * fold + 1 .. + 5)."""
  names = pascal_classes()
  return [names[i - 1] for i in pascal5i_fold(fold)]


def zero_shot_classes(pairs: int) -> list[str]:
  """The classes the original's `remove_classes: [zs, pairs]` removes: the first `pairs` zero-shot pairs
  (`rd64-uni-zs5`: 5 pairs, 10 classes; `rd64-uni-zs2`: 2 pairs, 4 classes)."""
  if pairs not in range(1, len(ZERO_SHOT_PAIRS) + 1):
    raise ValueError(f"the zero-shot split removes 1-{len(ZERO_SHOT_PAIRS)} class pairs, got {pairs}")
  return [c for pair in ZERO_SHOT_PAIRS[:pairs] for c in pair]


@functools.cache
def hyponym_lists() -> dict[str, dict]:
  """VOC class -> {"synset", "multi", "single", "forms"} (see experiments/scripts/make_hyponym_lists.py)."""
  try:
    return json.loads(HYPONYMS.read_text())["classes"]
  except (OSError, ValueError, KeyError) as e:
    raise ValueError(
      f"{HYPONYMS}: cannot read the held-out word lists ({e}); regenerate them with "
      "experiments/scripts/make_hyponym_lists.py"
    ) from None


def wordnet_filter(classes):
  """-> predicate(phrase), False for phrases the original's WordNet rule removes for `classes`."""
  _check(classes)
  lists = hyponym_lists()
  multi = sorted({m for c in classes for m in lists[c]["multi"]}, key=len, reverse=True)
  forms = frozenset(w for c in classes for w in lists[c]["forms"])
  # `any(l in phrase for l in multi)` as one search: an alternation of the literal lemmas (case as stored).
  pattern = re.compile("|".join(map(re.escape, multi))) if multi else None

  def keep(phrase: str) -> bool:
    if pattern is not None and pattern.search(phrase):
      return False
    return forms.isdisjoint(phrase.split(" "))

  return keep


def heldout_words(classes) -> list[str]:
  synonyms = pascal_synonyms()
  unknown = [c for c in classes if c not in synonyms]
  if unknown:
    raise ValueError(f"unknown PASCAL class(es) {unknown}; known: {', '.join(synonyms)}")
  return sorted({w for c in classes for w in synonyms[c]})


def make_filter(classes, rule: str = "synonyms"):
  """-> predicate(phrase) that is False for phrases naming any of `classes` by `rule` ("wordnet": the
  original's hyponym rule; "synonyms": our hand-made list, whole words)."""
  if rule == "wordnet":
    return wordnet_filter(classes)
  if rule != "synonyms":
    raise ValueError(f"unknown held-out rule {rule!r}; use one of {', '.join(RULES)}")
  words = heldout_words(classes)
  if not words:
    return lambda phrase: True
  pattern = re.compile(
    r"\b(" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + r")\b", re.IGNORECASE
  )
  return lambda phrase: pattern.search(phrase) is None


def repeated_phrases(source, keep=None):
  """-> predicate(phrase), True for phrases that more than one kept (record, phrase) pair carries: the
  original's `only_visual` samples (a visual support from another sample always exists)."""
  counts = collections.Counter(p for r in range(len(source)) for p in source.phrases(r) if keep is None or keep(p))
  return lambda phrase: counts[phrase] > 1 and (keep is None or keep(phrase))
