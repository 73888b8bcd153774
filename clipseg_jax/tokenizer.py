"""CLIP's BPE tokenizer through transformers, offline, and the one function that turns texts into ids.

Checkpoints that carry tokenizer files (`tokenizer.json`, or `vocab.json` + `merges.txt`) use them.
Otherwise the tokenizer is OpenAI CLIP's (MIT): its byte-level BPE vocabulary of 49,408 entries ships
with the embedded CLIP (`assets/synthetic_clip/tokenizer.json`), so nothing outside the package is
needed to tokenize. Pad = end-of-text, as `openai/clip-vit-base-patch16`.

Texts are cleaned first as OpenAI's own tokenizer does (`clip/simple_tokenizer.py`: ftfy, HTML entities
unescaped twice, whitespace collapsed), which the released CLIPSeg weights were trained with through
`clip.tokenize`; transformers' tokenizer skips this ("salt &amp; pepper": 7 ids there, 5 here).
"""

from __future__ import annotations

import functools
import html
import os
import re
import warnings
from pathlib import Path

import ftfy
import numpy as np

MAX_LENGTH = 77  # CLIP's text context (its position embeddings)
DEFAULT_DIR = Path(__file__).resolve().parent / "assets" / "synthetic_clip"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")  # either makes a directory a tokenizer's


def has_tokenizer(directory: str | os.PathLike) -> bool:
  d = Path(directory)
  return d.is_dir() and any((d / name).exists() for name in TOKENIZER_FILES)


@functools.lru_cache(maxsize=8)
def _from_dir(directory: str):
  from transformers import AutoTokenizer

  try:
    tok = AutoTokenizer.from_pretrained(directory)
  except Exception as e:  # noqa: BLE001 - tokenizers/transformers raise many types for damaged files
    files = ", ".join(n for n in (*TOKENIZER_FILES, "tokenizer_config.json") if (Path(directory) / n).exists())
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise ValueError(f"cannot read the tokenizer in {directory} ({files}: truncated or damaged?): {reason}") from None
  if tok.model_max_length > 10_000:  # unset in some saved configs
    tok.model_max_length = MAX_LENGTH
  _guard_save(tok)
  return tok


def _guard_save(tok):
  """`tok.save_pretrained` with its failures (the Rust tokenizer reports a full disk as a bare Exception
  "No space left on device (os error 28)") as one OSError naming the directory; the files it had
  written by then are removed, so no half-written tokenizer.json is left behind."""
  save = tok.save_pretrained

  def save_pretrained(save_directory, *args, **kwargs):
    folder = Path(save_directory)
    before = set(folder.iterdir()) if folder.is_dir() else set()
    try:
      return save(save_directory, *args, **kwargs)
    except Exception as e:
      if not isinstance(e, OSError) and "os error" not in str(e):
        raise  # a bug, not the disk
      written = set(folder.iterdir()) - before if folder.is_dir() else set()
      for f in written:
        if f.is_file():
          f.unlink(missing_ok=True)
      raise OSError(f"cannot write the tokenizer to {folder}: {e}") from e

  tok.save_pretrained = save_pretrained


def default_tokenizer():
  """OpenAI CLIP's tokenizer, from the files inside the package."""
  return _from_dir(str(DEFAULT_DIR))


def load_tokenizer(directory: str | os.PathLike | None = None):
  """The tokenizer saved in `directory` if it has one, else OpenAI CLIP's."""
  if directory is not None and has_tokenizer(directory):
    return _from_dir(str(Path(directory).resolve()))
  return default_tokenizer()


def clean_text(text: str) -> str:
  """OpenAI CLIP's text cleaning (`basic_clean` + `whitespace_clean`); the tokenizer lowercases."""
  text = html.unescape(html.unescape(ftfy.fix_text(text)))
  return re.sub(r"\s+", " ", text).strip()


class PromptTruncatedWarning(UserWarning):
  """A text had more tokens than the text tower's context and was cut (filter it to silence)."""


def _shorten(text: str, limit: int = 60) -> str:
  return text if len(text) <= limit else text[: limit - 3] + "..."


def warn_truncated(tokenizer, cleaned, mask, max_length: int):
  """One warning naming the texts `tokenize` cut to `max_length` tokens (a full mask may just fit: those
  are counted again, untruncated)."""
  full = [i for i, n in enumerate(mask.sum(axis=1)) if n >= max_length]
  if not full:
    return
  counts = tokenizer([cleaned[i] for i in full], truncation=False, verbose=False)["input_ids"]
  cut = [(cleaned[i], len(c)) for i, c in zip(full, counts) if len(c) > max_length]
  if not cut:
    return
  text, n = cut[0]
  more = f" (and {len(cut) - 1} more prompt(s))" if len(cut) > 1 else ""
  warnings.warn(
    f"prompt {_shorten(text)!r} is {n} tokens; truncated to {max_length} (the text context){more}",
    PromptTruncatedWarning,
    stacklevel=3,
  )


def tokenize(tokenizer, texts, max_length: int = MAX_LENGTH, *, multiple: int | None = None):
  """int32 (ids, attention mask) [N, L] for `texts`, each truncated to `max_length` tokens.

  L is `max_length` (fixed shapes for training), or with `multiple` the longest text's length rounded up
  to that multiple (capped at `max_length`): jit then sees a few lengths, not one per prompt. Padding
  sits after the end-of-text token, where causal attention keeps it out of the pooled embedding.
  Texts longer than `max_length` tokens are truncated with one `PromptTruncatedWarning` per call."""
  cleaned = [clean_text(t) for t in texts]
  out = tokenizer(
    cleaned,
    padding="longest" if multiple else "max_length",
    truncation=True,
    max_length=max_length,
    return_tensors="np",
  )
  ids, mask = out["input_ids"].astype(np.int32), out["attention_mask"].astype(np.int32)
  warn_truncated(tokenizer, cleaned, mask, max_length)
  if multiple:
    length = min(max_length, -(-ids.shape[1] // multiple) * multiple)
    pad = ((0, 0), (0, length - ids.shape[1]))
    ids = np.pad(ids, pad, constant_values=tokenizer.pad_token_id or 0)
    mask = np.pad(mask, pad)
  return ids, mask
