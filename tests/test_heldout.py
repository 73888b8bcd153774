"""The original's held-out class filter for PASCAL-5i / zero-shot training (timojl/clipseg datasets/phrasecut.py
`remove_classes`: WordNet hyponyms + NLTK's lemmatizer), from the shipped word lists."""

import json
import os
from pathlib import Path

import pytest

from clipseg_jax.input_pipeline.classes import pascal_classes
from clipseg_jax.input_pipeline.heldout import fold_classes, make_filter, repeated_phrases, zero_shot_classes

# The original's PASCAL_5I_CLASS_IDS: the classes each fold TRAINS on (1-based VOC labels); it avoids the rest.
PASCAL_5I_CLASS_IDS = {
  3: list(range(1, 16)),
  2: list(range(1, 11)) + list(range(16, 21)),
  1: list(range(1, 6)) + list(range(11, 21)),
  0: list(range(6, 21)),
}
PHRASES = [
  "two cats", "Cat on a mat", "cat,", "alley cat by the door", "a bobcat", "category", "scatter plot", "kittens",
  "geese on the lake", "a flock of birds", "sailboat", "the ship's mast", "catsup bottle", "wine bottles",
  "men walking", "women", "a tall man", "the human", "body of water", "somebody", "children playing",
  "potted plant", "pot plant on sill", "plant in a pot", "tv set on table", "the tvs", "television screen",
  "dining table", "kitchen table", "tables", "a table", "sofa", "couches", "sheep grazing", "lambs", "train car",
  "trains", "bullet holes", "a horse", "ponies", "dogs", "puppy", "motorcycles", "bike rack", "a bus", "cars",
  "armchair", "chairs", "cattle", "cows", "bull", "aircraft", "planes", "jet", "bicycles", "wheel",
  "the mens room", "grass", "glasses", "people", "person", "persons", "leaves", "wolves", "boxes", "buses",
]  # fmt: skip
# What the original's code removes from PHRASES per fold, run with NLTK 3.10 on WordNet 3.0 (Debian's
# wordnet-base): `traverse_lemmas_hypo` over PASCAL_5I_SYNSETS_ORDERED and `WordNetLemmatizer().lemmatize`.
# Note its quirks, kept: "Cat"/"cat," stay (case, punctuation), "men" stays ("men" is itself a WordNet noun),
# "potted plant" stays (only "pot plant" is a lemma), "body of water" and "bullet holes" go.
REMOVED = {
  0: ["geese on the lake", "a flock of birds", "sailboat", "catsup bottle", "wine bottles", "bike rack", "planes",
      "jet", "bicycles", "wheel"],
  1: ["two cats", "alley cat by the door", "a bobcat", "train car", "a bus", "cars", "armchair", "chairs", "cattle",
      "cows", "bull", "buses"],
  2: ["women", "a tall man", "the human", "body of water", "children playing", "tv set on table", "dining table",
      "kitchen table", "tables", "a table", "a horse", "ponies", "dogs", "puppy", "motorcycles", "bike rack",
      "person", "persons"],
  3: ["pot plant on sill", "tv set on table", "the tvs", "television screen", "sofa", "couches", "sheep grazing",
      "train car", "trains", "bullet holes"],
}  # fmt: skip


@pytest.mark.parametrize("fold", range(4))
def test_fold_classes_are_the_originals(fold):
  voc = pascal_classes()
  assert fold_classes(fold) == [voc[i] for i in range(20) if i + 1 not in PASCAL_5I_CLASS_IDS[fold]]


def test_zero_shot_classes_are_the_originals_pairs():
  # PASCAL_VOC_CLASSES_ZS[:stop] (synsets cattle, motorcycle, aeroplane, sofa, cat, television, train, ...)
  assert zero_shot_classes(2) == ["cow", "motorbike", "aeroplane", "sofa"]
  assert len(zero_shot_classes(5)) == 10 and set(zero_shot_classes(5)) < set(pascal_classes())
  with pytest.raises(ValueError, match="1-5 class pairs"):
    zero_shot_classes(6)


@pytest.mark.parametrize("fold", range(4))
def test_wordnet_filter_removes_what_the_original_removes(fold):
  keep = make_filter(fold_classes(fold), "wordnet")
  assert [p for p in PHRASES if not keep(p)] == REMOVED[fold]


def test_rules_and_bad_input():
  assert make_filter(["cat"], "synonyms")("the kitten") is False  # our hand list is a different rule
  assert make_filter(["cat"], "wordnet")("the kitten") is True  # kitten is no hyponym of cat.n.01 in WordNet
  with pytest.raises(ValueError, match="unknown held-out rule"):
    make_filter(["cat"], "hyponyms")
  with pytest.raises(ValueError, match="unknown PASCAL class"):
    make_filter(["unicorn"], "wordnet")


def test_only_visual_keeps_phrases_with_more_than_one_sample():
  class Source:
    phrases_ = [["a cat", "a dog"], ["a cat"], ["a dog", "a bird"]]

    def __len__(self):
      return len(self.phrases_)

    def phrases(self, r):
      return self.phrases_[r]

  keep = repeated_phrases(Source())
  assert [keep(p) for p in ("a cat", "a dog", "a bird")] == [True, True, False]
  keep = repeated_phrases(Source(), keep=lambda p: p != "a cat")
  assert [keep(p) for p in ("a cat", "a dog", "a bird")] == [False, True, False]


@pytest.mark.skipif(not os.environ.get("CLIPSEG_WORDNET"), reason="set CLIPSEG_WORDNET to a WordNet 3.0 dict folder")
def test_shipped_lists_regenerate(tmp_path):
  """With NLTK and WordNet at hand, the script rebuilds the shipped lists exactly."""
  import subprocess
  import sys

  root = Path(__file__).resolve().parents[1]
  out = tmp_path / "lists.json"
  script = root / "experiments/scripts/make_hyponym_lists.py"
  subprocess.run([sys.executable, script, "--wordnet", os.environ["CLIPSEG_WORDNET"], "--out", out], check=True)
  shipped = json.loads((root / "clipseg_jax/input_pipeline/data/pascal_hyponyms.json").read_text())
  assert json.loads(out.read_text())["classes"] == shipped["classes"]
