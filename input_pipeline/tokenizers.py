"""Tokenizers: text → fixed-length int32 ids and a boolean mask.

Every tokenizer frames a text as `[CLS] tokens… [SEP]` then pads with [PAD], so BERT-style masked
pooling and CLIP-style EOT pooling (the last real token) both work on its output.
"""

import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

PAD, UNK, CLS, SEP = "[PAD]", "[UNK]", "[CLS]", "[SEP]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP)
_WORD_RE = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def split_words(text: str) -> list[str]:
    """Lower-case words and single punctuation marks."""
    return _WORD_RE.findall(text.lower())


def _frame(
    texts: Sequence[str],
    max_len: int,
    tokenize: Callable[[str], list[int]],
    ids: Mapping[str, int],
) -> tuple[np.ndarray, np.ndarray]:
    """`[CLS] ids… [SEP]` per text, cut to `max_len`, padded with [PAD]; and the real-token mask."""
    tokens = np.full((len(texts), max_len), ids[PAD], np.int32)
    mask = np.zeros((len(texts), max_len), bool)
    for row, text in enumerate(texts):
        framed = [ids[CLS], *tokenize(text)[: max_len - 2], ids[SEP]]
        tokens[row, : len(framed)] = framed
        mask[row, : len(framed)] = True
    return tokens, mask


class WordTokenizer:
    """A word-level vocabulary fitted on a corpus: the demo's tokenizer, exact for its grammar."""

    def __init__(self, words: Sequence[str]):
        self.vocab = list(SPECIAL_TOKENS) + [w for w in words if w not in SPECIAL_TOKENS]
        self.ids = {w: i for i, w in enumerate(self.vocab)}
        if len(self.ids) != len(self.vocab):
            raise ValueError("duplicate words in the vocabulary")

    @classmethod
    def fit(cls, texts: Iterable[str]) -> "WordTokenizer":
        return cls(sorted({w for text in texts for w in split_words(text)}))

    @classmethod
    def from_file(cls, path: str | Path) -> "WordTokenizer":
        """One word per line, specials first (as `save` writes)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"vocabulary file {path} not found")
        return cls(path.read_text().splitlines())

    def save(self, path: str | Path) -> None:
        Path(path).write_text("\n".join(self.vocab) + "\n")

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def tokenize(self, text: str) -> list[int]:
        unk = self.ids[UNK]
        return [self.ids.get(w, unk) for w in split_words(text)]

    def __call__(self, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Ids [N, max_len] int32 and mask [N, max_len] bool; long texts are cut before [SEP]."""
        return _frame(texts, max_len, self.tokenize, self.ids)


def _is_punctuation(char: str) -> bool:
    """BERT's rule: ASCII non-alphanumerics count as punctuation, plus Unicode class P*."""
    code = ord(char)
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def bert_basic_split(text: str, lower_case: bool = True) -> list[str]:
    """BERT's BasicTokenizer: clean, lower-case, strip accents, split whitespace and punctuation."""
    text = "".join(
        " " if ch.isspace() else ch
        for ch in text
        if (ord(ch) not in (0, 0xFFFD) and unicodedata.category(ch) not in ("Cc", "Cf"))
        or ch in "\t\n\r"
    )
    if lower_case:
        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(ch for ch in text if unicodedata.category(ch) != "Mn")
    words: list[str] = []
    for chunk in text.split():
        current = ""
        for ch in chunk:
            if _is_punctuation(ch):
                if current:
                    words.append(current)
                words.append(ch)
                current = ""
            else:
                current += ch
        if current:
            words.append(current)
    return words


class BertWordPieceTokenizer:
    """BERT's WordPiece (`vocab.txt` of a Hugging Face BERT checkpoint), greedy longest match."""

    def __init__(self, vocab_file: str | Path, lower_case: bool = True, max_word_chars: int = 100):
        path = Path(vocab_file)
        if not path.is_file():
            raise FileNotFoundError(
                f"BERT vocabulary {path} not found (vocab.txt of the checkpoint)"
            )
        self.vocab = path.read_text(encoding="utf-8").splitlines()
        self.ids = {w: i for i, w in enumerate(self.vocab)}
        missing = [t for t in SPECIAL_TOKENS if t not in self.ids]
        if missing:
            raise ValueError(f"{path}: special tokens {missing} are not in the vocabulary")
        self.lower_case = lower_case
        self.max_word_chars = max_word_chars

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def _word_pieces(self, word: str) -> list[int]:
        if len(word) > self.max_word_chars:
            return [self.ids[UNK]]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.ids:
                    pieces.append(self.ids[piece])
                    break
                end -= 1
            else:
                return [self.ids[UNK]]
            start = end
        return pieces

    def tokenize(self, text: str) -> list[int]:
        return [i for w in bert_basic_split(text, self.lower_case) for i in self._word_pieces(w)]

    def __call__(self, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Ids [N, max_len] int32 ([CLS] … [SEP], padded with [PAD]) and mask [N, max_len] bool."""
        return _frame(texts, max_len, self.tokenize, self.ids)
