"""Tokenizers: text → fixed-length int32 ids and a boolean mask.

Every tokenizer frames a text as `[CLS] tokens… [SEP]` (CLIP's BPE: `<|startoftext|> tokens…
<|endoftext|>`) then pads, so BERT-style masked pooling and CLIP-style EOT pooling (the last real
token, at `mask.sum() - 1`) both work on its output. Truncation keeps the closing token.
"""

import abc
import errno
import gzip
import html
import itertools
import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from input_pipeline.errors import InputDataError, RequiredFile, check_number

Tokenizer = Callable[[list[str], int], tuple[np.ndarray, np.ndarray]]  # (ids, mask) of N texts

PAD, UNK, CLS, SEP = "[PAD]", "[UNK]", "[CLS]", "[SEP]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP)
_WORD_RE = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def split_words(text: str) -> list[str]:
    """Lower-case words and single punctuation marks."""
    return _WORD_RE.findall(text.lower())


def _frame(
    token_lists: Sequence[Sequence[int]], max_len: int, start: int, end: int, pad: int
) -> tuple[np.ndarray, np.ndarray]:
    """`start ids… end` per text, cut to `max_len` keeping `end`, padded; the real-token mask."""
    tokens = np.full((len(token_lists), max_len), pad, np.int32)
    mask = np.zeros((len(token_lists), max_len), bool)
    for row, ids in enumerate(token_lists):
        framed = [start, *ids[: max_len - 2], end]
        tokens[row, : len(framed)] = framed
        mask[row, : len(framed)] = True
    return tokens, mask


def _bert_frame(ids: dict[str, int]) -> tuple[int, int, int]:
    """The (start, end, pad) ids of `[CLS] … [SEP] [PAD]…` framing."""
    return ids[CLS], ids[SEP], ids[PAD]


def _missing(path: str | Path, what: str) -> FileNotFoundError:
    """A missing file the command-line tools report in one line (`cli.run`: its name)."""
    return FileNotFoundError(errno.ENOENT, what, str(path))


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
            raise _missing(path, "vocabulary file not found")
        try:
            return cls(path.read_text(encoding="utf-8").splitlines())
        except (UnicodeDecodeError, ValueError) as error:
            raise InputDataError(f"{path}: not a word list, one per line ({error})") from None

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
        return _frame([self.tokenize(t) for t in texts], max_len, *_bert_frame(self.ids))


def _is_punctuation(char: str) -> bool:
    """BERT's rule: ASCII non-alphanumerics count as punctuation, plus Unicode class P*."""
    code = ord(char)
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True
    return unicodedata.category(char).startswith("P")


# ASCII text (nearly every description) takes a regex path with the same result: its control
# characters but tab, newline and return are removed, and its punctuation is BERT's ASCII ranges.
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_ASCII_PUNCTUATION = r"!-/:-@\[-`{-~"
_ASCII_WORD_RE = re.compile(rf"[{_ASCII_PUNCTUATION}]|[^\s{_ASCII_PUNCTUATION}]+")
WORD_CACHE_SIZE = 1 << 18  # distinct chunks whose pieces a WordPiece tokenizer remembers


def bert_basic_split(text: str, lower_case: bool = True) -> list[str]:
    """BERT's BasicTokenizer: clean, lower-case, strip accents, split whitespace and punctuation."""
    if text.isascii():
        text = _ASCII_CONTROL.sub("", text)
        return _ASCII_WORD_RE.findall(text.lower() if lower_case else text)
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


class _WordPieces(dict):
    """A whitespace-free chunk of normalized text (`BertWordPieceTokenizer.chunks`) → the
    WordPiece ids of its words and punctuation marks (greedy longest match). Computed on a chunk's
    first lookup and kept for the first `WORD_CACHE_SIZE` chunks: descriptions reuse a few
    thousand, so tokenizing a text is a whitespace split and dictionary lookups."""

    def __init__(self, ids: Mapping[str, int], max_word_chars: int):
        super().__init__()
        self.ids, self.max_word_chars = ids, max_word_chars

    def __missing__(self, chunk: str) -> tuple[int, ...]:
        # A chunk has no whitespace: the ASCII split finds its words and punctuation marks, and
        # a word of the Unicode path (`bert_basic_split`) is found whole.
        pieces = tuple(i for word in _ASCII_WORD_RE.findall(chunk) for i in self.pieces(word))
        if len(self) < WORD_CACHE_SIZE:
            self[chunk] = pieces
        return pieces

    def pieces(self, word: str) -> list[int]:
        ids = self.ids
        if len(word) > self.max_word_chars:
            return [ids[UNK]]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in ids:
                    pieces.append(ids[piece])
                    break
                end -= 1
            else:
                return [ids[UNK]]
            start = end
        return pieces


class BertWordPieceTokenizer:
    """BERT's WordPiece (`vocab.txt` of a Hugging Face BERT checkpoint), greedy longest match.

    Python with the pieces of each distinct chunk of text cached (`_WordPieces`): 21 µs of CPU per
    442-character description, tokenized and framed to 512, against 150–175 µs with Hugging Face
    `tokenizers`' BertNormalizer + BertPreTokenizer + WordPiece (`encode_batch` or
    `encode_batch_fast`, one thread: the same ids), which builds a full `Encoding` (tokens,
    offsets) per text (2-core CPU, 2026-12-07).
    """

    def __init__(self, vocab_file: str | Path, lower_case: bool = True, max_word_chars: int = 100):
        path = Path(vocab_file)
        if not path.is_file():
            raise _missing(path, "BERT vocabulary not found (vocab.txt of the checkpoint)")
        try:
            self.vocab = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as error:
            raise InputDataError(f"{path}: not a BERT vocab.txt ({error})") from None
        self.ids = {w: i for i, w in enumerate(self.vocab)}
        missing = [t for t in SPECIAL_TOKENS if t not in self.ids]
        if missing:
            raise InputDataError(f"{path}: special tokens {missing} are not in the vocabulary")
        self.lower_case = lower_case
        self.max_word_chars = max_word_chars
        self._pieces_of = _WordPieces(self.ids, max_word_chars)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def chunks(self, text: str) -> list[str]:
        """`bert_basic_split`'s words, except that an ASCII text is only cleaned, lower-cased and
        split at whitespace: its punctuation is split off once per distinct chunk (`_WordPieces`),
        not once per text."""
        if not text.isascii():
            return bert_basic_split(text, self.lower_case)
        text = _ASCII_CONTROL.sub("", text)
        return (text.lower() if self.lower_case else text).split()

    def tokenize(self, text: str) -> list[int]:
        pieces = map(self._pieces_of.__getitem__, self.chunks(text))
        return list(itertools.chain.from_iterable(pieces))

    def __call__(self, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Ids [N, max_len] int32 ([CLS] … [SEP], padded with [PAD]) and mask [N, max_len] bool."""
        return _frame([self.tokenize(t) for t in texts], max_len, *_bert_frame(self.ids))


# --- CLIP's BPE -----------------------------------------------------------------------------------

CLIP_SOT, CLIP_EOT = "<|startoftext|>", "<|endoftext|>"
CLIP_NUM_MERGES = 49152 - 256 - 2  # OpenAI's SimpleTokenizer reads at most this many merges
CLIP_BPE_SOURCE = (
    "bpe_simple_vocab_16e6.txt.gz from the OpenAI CLIP repository or inside the open_clip_torch / "
    "clip-anytorch wheels"
)
CLIP_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
# ftfy's uncurl_quotes: LLM-written descriptions often hold curly quotes.
_UNCURL = str.maketrans(
    dict.fromkeys("\u02bc\u2018\u2019\u201a\u201b", "'")
    | dict.fromkeys("\u201c\u201d\u201e\u201f", '"')
)


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's byte → printable character table; its order fixes CLIP's first 256 ids."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    others = [b for b in range(256) if b not in printable]
    chars = [*map(chr, printable), *(chr(256 + i) for i in range(len(others)))]
    return dict(zip([*printable, *others], chars, strict=True))


def clip_clean(text: str) -> str:
    """OpenAI CLIP's cleaning without ftfy: unescape HTML twice, uncurl quotes, NFC, collapse
    whitespace, lower-case. ftfy also repairs mojibake, ligatures, full-width characters and
    control characters; texts needing those get other ids than OpenAI's."""
    text = unicodedata.normalize("NFC", html.unescape(html.unescape(text)).translate(_UNCURL))
    return " ".join(text.split()).lower()


class ClipBpeTokenizer:
    """OpenAI CLIP's BPE (`bpe_simple_vocab_16e6.txt.gz`) run by Hugging Face `tokenizers`.

    The model is built as transformers' CLIPConverter does (vocabulary = 256 byte characters, the
    same with `</w>`, one token per merge, then the two specials; CLIP's split regex; byte-level
    without GPT-2's regex), so ids equal OpenAI's SimpleTokenizer: `<|startoftext|> … <|endoftext|>`
    padded with 0 (which is also "!": use the mask). Cleaning is `clip_clean` (no ftfy).
    """

    def __init__(self, bpe_file: str | Path):
        path = Path(bpe_file)
        if not path.is_file():
            raise _missing(path, f"CLIP BPE vocabulary not found ({CLIP_BPE_SOURCE})")
        try:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                lines = f.read().split("\n")[1 : CLIP_NUM_MERGES + 1]  # line 0: a version header
        except (OSError, EOFError, UnicodeDecodeError) as error:
            raise InputDataError(f"{path}: not a gzipped CLIP BPE file ({error})") from None
        merges = [tuple(line.split()) for line in lines if line.strip()]
        if not merges or any(len(m) != 2 for m in merges):
            raise InputDataError(f"{path}: expected merges of two symbols per line")
        chars = list(bytes_to_unicode().values())
        vocab = [*chars, *(c + "</w>" for c in chars), *("".join(m) for m in merges)]
        self.ids = {token: i for i, token in enumerate([*vocab, CLIP_SOT, CLIP_EOT])}
        self._bpe = tokenizers.Tokenizer(
            models.BPE(self.ids, merges, end_of_word_suffix="</w>", fuse_unk=False)
        )
        self._bpe.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(tokenizers.Regex(CLIP_SPLIT), "removed", invert=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )

    @property
    def vocab_size(self) -> int:
        return len(self.ids)

    def tokenize(self, text: str) -> list[int]:
        return self._bpe.encode(clip_clean(text), add_special_tokens=False).ids

    def __call__(self, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Ids [N, max_len] int32 and mask [N, max_len] bool, as open_clip's `tokenize`."""
        cleaned = [clip_clean(t) for t in texts]
        encodings = self._bpe.encode_batch(cleaned, add_special_tokens=False)
        ids = [e.ids for e in encodings]
        return _frame(ids, max_len, self.ids[CLIP_SOT], self.ids[CLIP_EOT], 0)


# --- a BPE fitted on the training descriptions ----------------------------------------------------


class FittedBpeTokenizer:
    """A byte-level BPE fitted on the training texts, for text towers trained from scratch.

    Lower-cased, NFC, whitespace collapsed; bytes as the alphabet, so no text is unknown. Fitting is
    deterministic; training saves the tokenizer JSON once and reuses it on resume (`FittedBpe`).
    """

    def __init__(self, tokenizer: tokenizers.Tokenizer):
        self._bpe = tokenizer
        self.ids = tokenizer.get_vocab()
        missing = [t for t in SPECIAL_TOKENS if t not in self.ids]
        if missing:
            raise ValueError(f"special tokens {missing} are not in the fitted BPE vocabulary")

    @classmethod
    def fit(cls, texts: Iterable[str], vocab_size: int) -> "FittedBpeTokenizer":
        bpe = tokenizers.Tokenizer(models.BPE(unk_token=UNK))
        bpe.normalizer = normalizers.Sequence(
            [
                normalizers.NFC(),
                normalizers.Lowercase(),
                normalizers.Replace(tokenizers.Regex(r"\s+"), " "),
                normalizers.Strip(),
            ]
        )
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        bpe.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Strip(" ", 1, 0)])
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        bpe.train_from_iterator(texts, trainer)
        return cls(bpe)

    @classmethod
    def from_file(cls, path: str | Path) -> "FittedBpeTokenizer":
        if not Path(path).is_file():
            raise _missing(path, "fitted BPE tokenizer not found")
        try:
            return cls(tokenizers.Tokenizer.from_file(str(path)))
        except Exception as error:  # the Rust library raises its own Exception on a bad file
            raise InputDataError(f"{path}: not a saved BPE tokenizer ({error})") from None

    def save(self, path: str | Path) -> None:
        """Atomically (write, then rename): several processes may fit and save the same file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        self._bpe.save(str(tmp))
        tmp.replace(path)

    @property
    def vocab_size(self) -> int:
        return self._bpe.get_vocab_size()

    def tokenize(self, text: str) -> list[int]:
        return self._bpe.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._bpe.decode(list(ids), skip_special_tokens=True)

    def __call__(self, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Ids [N, max_len] int32 ([CLS] … [SEP], padded with [PAD]) and mask [N, max_len] bool."""
        encodings = self._bpe.encode_batch(list(texts), add_special_tokens=False)
        return _frame([e.ids for e in encodings], max_len, *_bert_frame(self.ids))


# --- kinds: what `config.tokenizer.kind` names ----------------------------------------------------

BERT_VOCAB = (
    "vocab.txt of a Hugging Face BERT checkpoint, e.g. google-bert/bert-base-uncased "
    "(the folder the text tower's weights come from)"
)
Corpus = Callable[[], Iterable[str]]  # the training stream's texts, read only when fitting


class TokenizerKind(abc.ABC):
    """A tokenizer as the config names it: the one file it reads, if any (checked before any
    work, copied into the run record), how it is built, and its usual vocabulary size (to size
    a model whose files are elsewhere: compiling for another machine). To add one: a subclass
    and a line in `TOKENIZERS`."""

    file_key: str | None = None  # the key of config.tokenizer that names its file
    file_source: str = ""  # where a user gets that file
    usual_vocab_size: int | None = None

    def file(self, section: Mapping[str, Any], workdir: str | None) -> str | None:
        """The path of its file (`config.tokenizer.<file_key>`), or None if it reads none."""
        return section.get(self.file_key) if self.file_key else None

    def required_files(
        self, section: Mapping[str, Any], workdir: str | None, *, fit: bool
    ) -> list[RequiredFile]:
        """Files that must exist before a run starts (`fit`: a training run, which may fit)."""
        path = self.file(section, workdir)
        if path is None:
            return []
        return [RequiredFile(f"tokenizer.{self.file_key}", path, self.file_source)]

    @abc.abstractmethod
    def create(
        self, section: Mapping[str, Any], *, corpus: Corpus, workdir: str | None, fit: bool
    ) -> Tokenizer:
        """The tokenizer; `fit=False` (inference) never fits one."""

    def save(self, tokenizer: Tokenizer, section: Mapping[str, Any], workdir: str | None) -> None:
        """Keep a tokenizer fitted in memory where `file` says (training, once it holds the
        workdir); kinds that read a file the user gave have nothing to keep."""
        del tokenizer, section, workdir


class FittedWords(TokenizerKind):
    """`synthetic_words`: a word vocabulary fitted on the training source's texts (SynthPose's
    describer vocabulary and prompts): the demo's, exact for its grammar."""

    def create(self, section, *, corpus, workdir, fit):
        return WordTokenizer.fit(corpus())


class WordList(TokenizerKind):
    """`words`: a word list, one per line."""

    file_key, file_source = "vocab", "a word list, one per line"

    def create(self, section, *, corpus, workdir, fit):
        return WordTokenizer.from_file(section["vocab"])


class BertWordPiece(TokenizerKind):
    """`bert_wordpiece`: BERT's vocab.txt."""

    file_key, file_source, usual_vocab_size = "vocab", BERT_VOCAB, 30522

    def create(self, section, *, corpus, workdir, fit):
        return BertWordPieceTokenizer(section["vocab"])


class ClipBpe(TokenizerKind):
    """`clip_bpe`: CLIP's bpe_simple_vocab_16e6.txt.gz."""

    file_key, file_source, usual_vocab_size = "vocab", CLIP_BPE_SOURCE, 49408

    def create(self, section, *, corpus, workdir, fit):
        return ClipBpeTokenizer(section["vocab"])


class FittedBpe(TokenizerKind):
    """`fitted_bpe`: a BPE of `tokenizer.vocab_size` fitted on the training source's texts and
    kept as `tokenizer.path` (default `<workdir>/tokenizer.json`), reused from there on resume;
    inference reads it and never fits."""

    file_key = "path"
    file_source = "saved by the training run that fitted it, in its workdir"

    def file(self, section, workdir):
        return section.get("path") or (f"{workdir}/tokenizer.json" if workdir else "")

    def required_files(self, section, workdir, *, fit):
        return [] if fit else super().required_files(section, workdir, fit=fit)

    def create(self, section, *, corpus, workdir, fit):
        path = self.file(section, workdir)
        if path and Path(path).is_file():
            return FittedBpeTokenizer.from_file(path)
        if not fit:
            raise InputDataError(
                f"--config.tokenizer.path={path or '<unset>'}: the checkpoint's fitted BPE is not "
                "there (training saves it in its workdir); inference never fits one"
            )
        if not path:
            raise ValueError("config tokenizer.path: where the fitted BPE is kept, e.g. a workdir")
        return FittedBpeTokenizer.fit(corpus(), section["vocab_size"])

    def save(self, tokenizer, section, workdir):
        path = self.file(section, workdir)
        if not Path(path).is_file():
            tokenizer.save(path)


TOKENIZERS: dict[str, TokenizerKind] = {
    "synthetic_words": FittedWords(),
    "words": WordList(),
    "bert_wordpiece": BertWordPiece(),
    "clip_bpe": ClipBpe(),
    "fitted_bpe": FittedBpe(),
}


def kind_of(section: Mapping[str, Any]) -> TokenizerKind:
    """The registered kind `config.tokenizer.kind`; an unknown one lists them."""
    kind = section.get("kind")
    if kind not in TOKENIZERS:
        raise ValueError(f"config tokenizer.kind={kind!r}: expected one of {sorted(TOKENIZERS)}")
    if "vocab_size" in section:  # fitted_bpe's size; any kind's config may hold one
        check_number("config tokenizer.vocab_size", section["vocab_size"], integer=True, at_least=1)
    return TOKENIZERS[kind]
