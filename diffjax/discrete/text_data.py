"""Character-level English text that ships with Python itself: the data source ``'text'``.

Corpus: ``pydoc_data.topics``, the ~465 kB of Python Language Reference text that CPython's standard
library installs for ``help()`` (79 topics: statements, the data model, operators, ...). No
download, no extra package. Cleaning: lower case; every character outside the vocabulary (digits,
brackets, quotes, underline rows of RST headings, ...) becomes a space; runs of white space
collapse to one space. Vocabulary (29 tokens): ' ' 'a'..'z' '.' ','; the mask id is 29.
Split within every topic (sorted names): its first 90% of characters are 'train', the last 10%
'test' (held out: ~44k characters); 'all' is both. Examples: consecutive non-overlapping windows
of ``seq_len`` characters of the split's text (the topics' parts joined by a space), as float32
token ids (the data layer's convention; exact for ids < 2^24), label 0.

    config.data = dict(name='text', split='train', seq_len=64)
"""
from __future__ import annotations

import functools
import re

import numpy as np

from diffjax.data.arrays import ArraySource

VOCAB = " abcdefghijklmnopqrstuvwxyz.,"
VOCAB_SIZE = len(VOCAB)          # 29; the mask id
MASK_CHAR = "_"
SPLITS = ("train", "test", "all")
TRAIN_FRACTION = 0.9
_INDEX = {c: i for i, c in enumerate(VOCAB)}


def clean(text: str) -> str:
    """Lower case, out-of-vocabulary characters to spaces, white space collapsed."""
    text = "".join(c if c in _INDEX else " " for c in text.lower())
    return re.sub(r"\s+", " ", text).strip()


def encode(text: str) -> np.ndarray:
    """int32 ids of ``clean(text)``."""
    return np.asarray([_INDEX[c] for c in clean(text)], np.int32)


def decode(ids) -> str:
    """Characters of token ids; the mask id (and anything out of range) shows as '_'."""
    return "".join(VOCAB[i] if 0 <= i < VOCAB_SIZE else MASK_CHAR
                   for i in np.asarray(ids).astype(int).ravel())


@functools.lru_cache(maxsize=None)
def split_text(split: str = "train") -> str:
    """The cleaned text of a split (module docstring)."""
    if split not in SPLITS:
        raise ValueError(f"text: unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    try:
        from pydoc_data import topics
    except ImportError as e:   # some distributions package the stdlib's pydoc_data separately
        raise FileNotFoundError("the 'text' data source reads Python's pydoc_data.topics, which "
                                "this Python installation lacks") from e
    parts = []
    for name in sorted(topics.topics):
        text = clean(topics.topics[name])
        cut = int(round(TRAIN_FRACTION * len(text)))
        parts.append(text if split == "all" else text[:cut] if split == "train" else text[cut:])
    return " ".join(p.strip() for p in parts if p.strip())


def windows(split: str = "train", seq_len: int = 64) -> np.ndarray:
    """(N, seq_len) int32: the split's text cut into consecutive windows (the tail is dropped)."""
    if seq_len < 1:
        raise ValueError(f"text: seq_len must be >= 1, got {seq_len}")
    ids = encode(split_text(split))
    n = len(ids) // seq_len
    return ids[: n * seq_len].reshape(n, seq_len)


def _get(config, key, default):
    getter = getattr(config, "get", None)
    return getter(key, default) if getter is not None else getattr(config, key, default)


def text_source(config) -> ArraySource:
    """``src[i] = {'x': float32 (seq_len,) token ids, 'label': 0}`` (module docstring)."""
    tokens = windows(_get(config, "split", "train"), int(_get(config, "seq_len", 64)))
    return ArraySource(tokens.astype(np.float32), np.zeros(len(tokens), np.int32), num_classes=1)
