"""CLIP's BPE tokenizer through transformers' `CLIPTokenizer`, offline.

Checkpoints that ship tokenizer files use them. Otherwise the tokenizer is built from OpenAI's
`bpe_simple_vocab_16e6.txt.gz`, which the `clip-anytorch` wheel carries (installed with `--no-deps`
by `make setup`; its torch code is never imported). Vocabulary: the 256 byte symbols, the same with
'</w>', one token per merge, then the two specials: 49,408 entries.

Trap: in transformers 5.x `CLIPTokenizer(vocab_file=..., merges_file=...)` silently yields wrong ids;
we pass `vocab=` and `merges=` objects.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os
from pathlib import Path

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2  # lines 1..48894 of the file
MAX_LENGTH = 77


def bytes_to_unicode() -> dict[int, str]:
  """GPT-2/CLIP's reversible byte -> printable character table."""
  printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
               + list(range(ord("®"), ord("ÿ") + 1)))
  chars = printable[:]
  extra = 0
  for b in range(256):
    if b not in printable:
      printable.append(b)
      chars.append(256 + extra)
      extra += 1
  return dict(zip(printable, map(chr, chars)))


def find_bpe_file() -> Path:
  env = os.environ.get("CLIPSEG_JAX_BPE")
  if env:
    return Path(env)
  spec = importlib.util.find_spec("clip")  # locates the package without importing it (it imports torch)
  for root in (spec.submodule_search_locations or []) if spec else []:
    path = Path(root) / BPE_FILE
    if path.exists():
      return path
  raise FileNotFoundError(
      f"CLIP's BPE vocabulary ({BPE_FILE}) was not found. Install it offline-ready with "
      "`pip install --no-deps clip-anytorch` (make setup does), or set CLIPSEG_JAX_BPE to the file.")


@functools.lru_cache(maxsize=1)
def _default_vocab():
  lines = gzip.open(find_bpe_file()).read().decode("utf-8").split("\n")
  merges = [tuple(line.split()) for line in lines[1:NUM_MERGES + 1]]
  symbols = list(bytes_to_unicode().values())
  tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
  tokens += ["<|startoftext|>", "<|endoftext|>"]
  return {t: i for i, t in enumerate(tokens)}, merges


def default_tokenizer():
  """The OpenAI CLIP tokenizer (pad = end-of-text, as `openai/clip-vit-base-patch16`)."""
  from transformers import CLIPTokenizer
  vocab, merges = _default_vocab()
  return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=MAX_LENGTH)


def load_tokenizer(directory: str | os.PathLike | None = None):
  """The tokenizer saved in `directory` if it has one, else the default CLIP tokenizer."""
  if directory is not None:
    d = Path(directory)
    if d.is_dir() and ((d / "tokenizer.json").exists() or (d / "vocab.json").exists()):
      from transformers import AutoTokenizer
      tok = AutoTokenizer.from_pretrained(str(d))
      if tok.model_max_length > 10_000:  # unset in some saved configs
        tok.model_max_length = MAX_LENGTH
      return tok
  return default_tokenizer()
