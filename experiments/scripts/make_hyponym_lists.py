"""Regenerate `clipseg_jax/input_pipeline/data/pascal_hyponyms.json`: the original's held-out class filter
(timojl/clipseg `datasets/phrasecut.py`: `traverse_lemmas_hypo` + `WordNetLemmatizer`) as plain word lists,
so that training needs no WordNet at run time.

Per PASCAL class, from its WordNet synset (the original's `PASCAL_5I_SYNSETS_ORDERED`; the zero-shot list
`PASCAL_VOC_CLASSES_ZS` names the same synsets): the lemma names of the synset and of all its hyponyms,
recursively ('person.n.01' is the original's fixed list), lower-cased with '_' -> ' '. Multi-word lemmas
("multi") remove a phrase holding them as a substring; a phrase word `w` (split on ' ') is removed when
`lemmatize(w)` is a single-word lemma: "forms" lists every such `w`, found by running the lemmatizer on
every candidate that can reach a lemma (the lemma itself, its inflections by up to two inverse morphy rules,
every key of noun.exc). The lemmatizer is NLTK's noun `_morphy` as the original ran it (NLTK <= 3.8:
exceptions first, then the rules applied until a form is in WordNet), shortest result, else `w` itself.

Needs NLTK (`pip install nltk`) and the WordNet 3.0 database NLTK reads: nltk_data's `corpora/wordnet`, or
Debian's `wordnet-base` (`apt-get install wordnet-base`: /usr/share/wordnet, which lacks `lexnames`; this
script supplies it). Usage:

  python experiments/scripts/make_hyponym_lists.py [--wordnet /usr/share/wordnet] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

# VOC class (label order) -> the original's synset (PASCAL_5I_SYNSETS_ORDERED, index = VOC label - 1).
SYNSETS = {
  "aeroplane": "aeroplane.n.01",
  "bicycle": "bicycle.n.01",
  "bird": "bird.n.01",
  "boat": "vessel.n.02",
  "bottle": "bottle.n.01",
  "bus": "bus.n.01",
  "car": "car.n.01",
  "cat": "cat.n.01",
  "chair": "chair.n.01",
  "cow": "cattle.n.01",
  "diningtable": "table.n.02",
  "dog": "dog.n.01",
  "horse": "horse.n.01",
  "motorbike": "motorcycle.n.01",
  "person": "person.n.01",
  "pottedplant": "pot_plant.n.01",
  "sheep": "sheep.n.01",
  "sofa": "sofa.n.01",
  "train": "train.n.01",
  "tvmonitor": "television.n.03",
}
PERSON = ["person", "human", "man", "woman", "toddler", "baby", "body", "child", "infant"]  # the original's list
NOUN_RULES = [  # NLTK's MORPHOLOGICAL_SUBSTITUTIONS for nouns
  ("s", ""),
  ("ses", "s"),
  ("ves", "f"),
  ("xes", "x"),
  ("zes", "z"),
  ("ches", "ch"),
  ("shes", "sh"),
  ("men", "man"),
  ("ies", "y"),
]
LEXNAMES = (
  "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body noun.cognition "
  "noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive noun.object "
  "noun.person noun.phenomenon noun.plant noun.possession noun.process noun.quantity noun.relation noun.shape "
  "noun.state noun.substance noun.time verb.body verb.change verb.cognition verb.communication verb.competition "
  "verb.consumption verb.contact verb.creation verb.emotion verb.motion verb.perception verb.possession "
  "verb.social verb.stative verb.weather adj.ppl"
).split()
LEX_POS = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}


def open_wordnet(path: Path | None):
  """NLTK's WordNet reader on `path` (a WordNet 3.0 dict folder), or nltk_data's when None."""
  from nltk.corpus.reader.wordnet import WordNetCorpusReader

  if path is None:
    from nltk.corpus import wordnet

    wordnet.ensure_loaded()
    return wordnet
  if not (path / "lexnames").exists():  # Debian's wordnet-base ships no lexnames: a copy with it
    tmp = Path(tempfile.mkdtemp(prefix="wordnet"))
    for f in path.iterdir():
      if f.is_file():
        shutil.copy(f, tmp / f.name)
    lines = [f"{i:02d}\t{name}\t{LEX_POS[name.split('.')[0]]}" for i, name in enumerate(LEXNAMES)]
    (tmp / "lexnames").write_text("\n".join(lines) + "\n")
    path = tmp
  import nltk

  nltk.data.path.append(str(path))  # recent NLTK reads corpora only under its data paths

  class Reader(WordNetCorpusReader):
    def map_wn(self, version="wordnet"):  # no second WordNet to map synsets to: this one is the reference
      return None

  return Reader(str(path), None)


def hyponym_lemmas(wn, name: str) -> list[str]:
  """The original's `traverse_lemmas_hypo(synset)`: lemma names of the synset and all hyponyms."""
  if name == "person.n.01":
    return list(PERSON)
  synset = wn.synset(name)
  out = [lemma.name() for lemma in synset.lemmas()]
  for h in synset.hyponyms():
    out += hyponym_lemmas(wn, h.name())
  return out


def make_lemmatizer(wn):
  """`WordNetLemmatizer().lemmatize(w)` (noun) with the `_morphy` of NLTK <= 3.8."""
  index, exceptions = wn._lemma_pos_offset_map, wn._exception_map["n"]

  def apply_rules(forms):
    return [f[: -len(old)] + new for f in forms for old, new in NOUN_RULES if f.endswith(old)]

  def known(forms):
    out = []
    for f in forms:
      if f in index and "n" in index[f] and f not in out:
        out.append(f)
    return out

  def morphy(form):
    if form in exceptions:
      return known([form] + exceptions[form])
    forms = apply_rules([form])
    found = known([form] + forms)
    while not found and forms:
      forms = apply_rules(forms)
      found = known(forms)
    return found

  def lemmatize(word):
    lemmas = morphy(word)
    return min(lemmas, key=len) if lemmas else word

  return lemmatize, exceptions


def inflections(lemma: str, depth: int = 2) -> set[str]:
  """Words from which up to `depth` morphy rules reach `lemma` (the rules run backwards)."""
  out, frontier = {lemma}, {lemma}
  for _ in range(depth):
    frontier = {f[: len(f) - len(new)] + old for f in frontier for old, new in NOUN_RULES if f.endswith(new)}
    out |= frontier
  return out


def class_lists(wn, lemmatize, exceptions, synset: str) -> dict:
  lemmas = {lemma.replace("_", " ").lower() for lemma in set(hyponym_lemmas(wn, synset))}
  single = {lemma for lemma in lemmas if " " not in lemma}
  candidates = set(exceptions) | {w for lemma in single for w in inflections(lemma)}
  forms = sorted(w for w in candidates if lemmatize(w) in single)
  return {"synset": synset, "multi": sorted(lemmas - single), "single": sorted(single), "forms": forms}


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--wordnet", type=Path, default=None, help="WordNet 3.0 dict folder (default: nltk_data's)")
  here = Path(__file__).resolve().parents[2]
  ap.add_argument("--out", type=Path, default=here / "clipseg_jax/input_pipeline/data/pascal_hyponyms.json")
  args = ap.parse_args()
  wn = open_wordnet(args.wordnet)
  lemmatize, exceptions = make_lemmatizer(wn)
  classes = {name: class_lists(wn, lemmatize, exceptions, synset) for name, synset in SYNSETS.items()}
  out = {
    "about": "timojl/clipseg datasets/phrasecut.py held-out filter, from WordNet "
    f"{wn.get_version()}; made by experiments/scripts/make_hyponym_lists.py",
    "classes": classes,
  }
  args.out.write_text(json.dumps(out, indent=0, sort_keys=True) + "\n")
  sizes = {k: (len(v["single"]), len(v["multi"]), len(v["forms"])) for k, v in classes.items()}
  print(f"wrote {args.out}: (single, multi, forms) per class {sizes}")


if __name__ == "__main__":
  main()
