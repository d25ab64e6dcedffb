"""Transcript normalisation for scoring and the character tokenizer of CTC models."""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path
from typing import Iterable

_KEEP = re.compile(r"[^\w' ]+", flags=re.UNICODE)
_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Lower-case, NFC, punctuation removed (apostrophes kept), single spaces.

    The same function normalises references and hypotheses, so WER is computed on like terms.
    """
    text = unicodedata.normalize("NFC", text).lower().replace("’", "'").replace("_", " ")
    text = _KEEP.sub(" ", text)
    text = " ".join(w.strip("'") for w in text.split())
    return _SPACES.sub(" ", text).strip()


BLANK = "<blank>"
DEFAULT_ALPHABET = "abcdefghijklmnopqrstuvwxyz'"


class CharTokenizer:
    """Characters <-> ids for CTC: id 0 is the blank, id 1 the word boundary (space)."""

    def __init__(self, alphabet: str = DEFAULT_ALPHABET) -> None:
        chars = sorted(set(alphabet) - {" "})
        self.symbols: list[str] = [BLANK, " "] + chars
        self._index = {s: i for i, s in enumerate(self.symbols)}

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> "CharTokenizer":
        """Alphabet = every character of the (normalised) training transcripts."""
        chars: set[str] = set()
        for t in texts:
            chars.update(t)
        return cls("".join(sorted(chars)))

    @property
    def blank_id(self) -> int:
        return 0

    @property
    def vocab_size(self) -> int:
        return len(self.symbols)

    def encode(self, text: str) -> list[int]:
        """Characters outside the alphabet are skipped (the alphabet is built from training text)."""
        return [self._index[c] for c in text if c in self._index]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.symbols[i] for i in ids if i != 0)

    def decode_ctc(self, ids: Iterable[int]) -> str:
        """Greedy CTC collapse: merge repeats, drop blanks, tidy spaces."""
        out: list[int] = []
        prev = -1
        for i in ids:
            if i != prev and i != 0:
                out.append(i)
            prev = i
        return " ".join(self.decode(out).split())

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"symbols": self.symbols}, ensure_ascii=False))

    @classmethod
    def load(cls, path: str | Path) -> "CharTokenizer":
        symbols = json.loads(Path(path).read_text())["symbols"]
        return cls("".join(symbols[2:]))
