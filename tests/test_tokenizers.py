"""Tokenizers: framing, truncation, BERT WordPiece on a hand-written vocabulary, CLIP's BPE against
open_clip's ids (fixtures of bench/make_tokenizer_goldens.py), a BPE fitted on descriptions."""

import importlib.util
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import tokenizers as hf_tokenizers
from tokenizers import models, normalizers, pre_tokenizers

from configs import pretrain
from input_pipeline import pipeline, records, tokenizers
from input_pipeline.errors import InputDataError, MissingFilesError
from input_pipeline.prepare import mpii, shards
from input_pipeline.tokenizers import (
    BertWordPieceTokenizer,
    ClipBpeTokenizer,
    FittedBpeTokenizer,
    WordTokenizer,
    bert_basic_split,
)
from synthpose import scenes
from tests.conftest import tiny_config

FIXTURES = Path(__file__).parent / "fixtures" / "tokenizers"
SMALL_BERT_VOCAB = FIXTURES / "bert_vocab_small.txt"
GOLDENS = json.loads((FIXTURES / "clip_bpe_goldens.json").read_text(encoding="utf-8"))
SMALL_CLIP = ClipBpeTokenizer(FIXTURES / GOLDENS["small"]["vocab"])
CONTEXT = GOLDENS["context_length"]


def test_word_tokenizer_frames_pads_and_truncates() -> None:
    tok = WordTokenizer.fit(["a person is sitting.", "arms raised"])
    ids, mask = tok(["A person is sitting.", "arms raised", "unknown words"], max_len=5)
    cls, sep, unk = tok.ids["[CLS]"], tok.ids["[SEP]"], tok.ids["[UNK]"]
    assert ids[0].tolist() == [cls, tok.ids["a"], tok.ids["person"], tok.ids["is"], sep]
    assert ids[1].tolist() == [cls, tok.ids["arms"], tok.ids["raised"], sep, 0]
    assert ids[2].tolist() == [cls, unk, unk, sep, 0]
    assert mask.tolist()[1] == [True, True, True, True, False]
    assert ids.dtype == np.int32 and mask.dtype == bool


def test_word_tokenizer_save_and_load_round_trip(tmp_path) -> None:
    tok = WordTokenizer.fit(["left arm up", "right leg bent"])
    tok.save(tmp_path / "vocab.txt")
    loaded = WordTokenizer.from_file(tmp_path / "vocab.txt")
    assert loaded.vocab == tok.vocab
    with pytest.raises(FileNotFoundError, match=r"missing\.txt"):
        WordTokenizer.from_file(tmp_path / "missing.txt")


def test_bert_basic_split_lowercases_strips_accents_splits_punctuation() -> None:
    assert bert_basic_split("Héllo, WORLD!  It's") == ["hello", ",", "world", "!", "it", "'", "s"]


def test_bert_basic_split_ascii_fast_path_equals_the_unicode_path() -> None:
    """ASCII text takes a regex path; a soft hyphen (a format character, removed) sends the same
    text through the character-by-character path, the reference."""
    rng = np.random.default_rng(0)
    alphabet = np.array([chr(c) for c in range(128)] + list("abcdefghijklmnopqrstuvwxyz  "))
    for _ in range(500):
        text = "".join(rng.choice(alphabet, rng.integers(0, 60)))
        for lower_case in (True, False):
            reference = bert_basic_split(text + "\u00ad", lower_case)
            assert bert_basic_split(text, lower_case) == reference, repr(text)


def test_bert_wordpiece_greedy_longest_match(tmp_path) -> None:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "un", "##aff", "##able", "runn", "##ing", "a", ","]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertWordPieceTokenizer(tmp_path / "vocab.txt")
    # The example from BERT's own WordpieceTokenizer docstring.
    assert tok.tokenize("unaffable") == [4, 5, 6]
    assert tok.tokenize("Running, a xyz") == [7, 8, 10, 9, 1]
    assert tok.tokenize("Running, a xyz") == [7, 8, 10, 9, 1]  # again, from the word cache
    ids, mask = tok(["unaffable"], max_len=8)
    assert ids[0].tolist() == [2, 4, 5, 6, 3, 0, 0, 0]
    assert mask[0].sum() == 5


def _random_texts(seed: int, alphabet: list[str], count: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(alphabet, rng.integers(0, 40))) for _ in range(count)]


ASCII = [chr(c) for c in range(128)]
POSE_WORDS = ["standing", "Stretched", "kneeling", "unaffable", "x" * 100, "y" * 101, "é" * 100]


@pytest.mark.parametrize("lower_case", [True, False])
def test_bert_wordpiece_equals_hugging_face_bert_pipeline(lower_case: bool) -> None:
    """Hugging Face `tokenizers`' BERT pipeline (BertNormalizer, BertPreTokenizer, WordPiece of at
    most 100 characters a word: transformers' BertTokenizer) is the reference on random texts of
    ASCII (control characters, tabs, punctuation), accented Latin, Unicode punctuation, spaces and
    format characters, and words of several pieces or too long. Left out, where the two differ: CJK
    ideographs (Hugging Face isolates each one, this tokenizer keeps them inside words), a capital
    sigma ending a word (Python's lower() gives a final sigma) and private-use characters (Hugging
    Face removes them, BERT's own Python tokenizer keeps them, as this one does)."""
    tokenizer = BertWordPieceTokenizer(SMALL_BERT_VOCAB, lower_case=lower_case)
    reference = hf_tokenizers.Tokenizer(
        models.WordPiece(tokenizer.ids, unk_token="[UNK]", max_input_chars_per_word=100)
    )
    reference.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=False, strip_accents=None, lowercase=lower_case
    )
    reference.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    latin = [*"éèüößçñÅÉİ—“”‘’…«»¿¡°±×÷", "\u00a0", "\u2028", "\u3000", "\u00ad", "\u200b"]
    texts = _random_texts(1, ASCII + POSE_WORDS, 1500) + _random_texts(2, ASCII + latin, 1500)
    for text in texts:
        want = reference.encode(text, add_special_tokens=False).ids
        assert tokenizer.tokenize(text) == want, repr(text)


@pytest.mark.parametrize("lower_case", [True, False])
def test_bert_wordpiece_ascii_chunks_equal_the_unicode_path(lower_case: bool) -> None:
    """An ASCII text is split at whitespace and its chunks' pieces cached; a soft hyphen (a format
    character, removed) sends the same text word by word through `bert_basic_split`."""
    tokenizer = BertWordPieceTokenizer(SMALL_BERT_VOCAB, lower_case=lower_case)
    for text in _random_texts(3, ASCII + POSE_WORDS + [" ", ", ", "."], 2000):
        assert tokenizer.tokenize(text) == tokenizer.tokenize(text + "\u00ad"), repr(text)


def test_bert_wordpiece_empty_long_and_cached_texts() -> None:
    tok = BertWordPieceTokenizer(SMALL_BERT_VOCAB)
    cls, sep, unk, comma, arm = (tok.ids[t] for t in ("[CLS]", "[SEP]", "[UNK]", ",", "arm"))
    x, more_x = tok.ids["x"], tok.ids["##x"]
    long = " ".join(["the left arm is raised above the head,"] * 80)
    texts = ["", " \t\n ", "x" * 100, "y" * 101 + ",", "arm, arm", "Arm,arm", long]
    ids, mask = tok(texts, max_len=8)
    assert ids[0].tolist() == ids[1].tolist() == [cls, sep, 0, 0, 0, 0, 0, 0]
    assert mask[0].tolist() == mask[1].tolist() == [True, True] + [False] * 6
    assert ids[2].tolist() == [cls, x, *[more_x] * 5, sep] and mask[2].all()  # cut before [SEP]
    assert ids[3].tolist()[:4] == [cls, unk, comma, sep]  # over 100 characters: one [UNK]
    assert ids[4].tolist()[:5] == ids[5].tolist()[:5] == [cls, arm, comma, arm, sep]
    full, full_mask = tok([long], max_len=512)
    pieces = tok.tokenize(long)
    assert len(pieces) > 510 and full_mask.all()
    assert full[0].tolist() == [cls, *pieces[:510], sep]
    # Pickled (grain's workers) with what it has cached, the same ids.
    clone = pickle.loads(pickle.dumps(tok))
    np.testing.assert_array_equal(clone(texts, 8)[0], ids)


def _full_clip_vocab() -> Path | None:
    """The full `bpe_simple_vocab_16e6.txt.gz`: $FOCUSCLIP_CLIP_BPE, else open_clip's copy."""
    if os.environ.get("FOCUSCLIP_CLIP_BPE"):
        return Path(os.environ["FOCUSCLIP_CLIP_BPE"])
    spec = importlib.util.find_spec("open_clip")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"
    return path if path.is_file() else None


def test_clip_bpe_ids_equal_open_clip_on_a_small_vocabulary() -> None:
    golden = np.asarray(GOLDENS["small"]["ids"])
    ids, mask = SMALL_CLIP(GOLDENS["small"]["texts"], CONTEXT)
    assert SMALL_CLIP.vocab_size == GOLDENS["small"]["vocab_size"]
    assert ids.dtype == np.int32 and mask.dtype == bool
    texts = GOLDENS["small"]["texts"]
    for text, got, want in zip(texts, ids.tolist(), golden.tolist(), strict=True):
        assert got == want, text
    # The mask marks real tokens: EOT pooling at sum(mask) - 1 picks <|endoftext|>.
    sot, eot = SMALL_CLIP.vocab_size - 2, SMALL_CLIP.vocab_size - 1
    assert (ids[:, 0] == sot).all()
    assert (ids[np.arange(len(ids)), mask.sum(1) - 1] == eot).all()
    assert (ids[~mask] == 0).all() and (mask[:, :-1] >= mask[:, 1:]).all()
    assert mask[-1].all()  # the long text is cut, keeping <|endoftext|> last
    assert ids[-1, -1] == eot and ids[-1, -2] != eot


def test_clip_bpe_truncation_keeps_end_of_text() -> None:
    golden = GOLDENS["small"]["ids"][2]
    ids, mask = SMALL_CLIP([GOLDENS["small"]["texts"][2]], 6)
    assert ids[0].tolist() == [*golden[:5], SMALL_CLIP.vocab_size - 1] and mask.all()
    empty, empty_mask = SMALL_CLIP([""], 4)
    assert empty[0].tolist() == [SMALL_CLIP.vocab_size - 2, SMALL_CLIP.vocab_size - 1, 0, 0]
    assert empty_mask[0].tolist() == [True, True, False, False]


@pytest.mark.skipif(_full_clip_vocab() is None, reason="no full CLIP BPE vocabulary found")
def test_clip_bpe_ids_equal_open_clip_on_the_full_vocabulary() -> None:
    tokenizer = ClipBpeTokenizer(_full_clip_vocab())
    assert tokenizer.vocab_size == GOLDENS["full"]["vocab_size"] == 49408
    ids, _ = tokenizer(GOLDENS["full"]["texts"], CONTEXT)
    assert ids.tolist() == GOLDENS["full"]["ids"]


def test_clip_bpe_missing_vocabulary_says_where_to_get_it(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="open_clip_torch"):
        ClipBpeTokenizer(tmp_path / "bpe_simple_vocab_16e6.txt.gz")
    config = tiny_config()
    config.tokenizer.kind = "clip_bpe"
    config.tokenizer.vocab = str(tmp_path / "bpe_simple_vocab_16e6.txt.gz")
    with pytest.raises(
        MissingFilesError, match=r"tokenizer\.vocab=.*: not found; get it from: .*open_clip_torch"
    ):
        pipeline.check_input_files(config)


def test_causal_variant_uses_clip_bpe_through_create_tokenizer() -> None:
    config = pretrain.get_config("causal")
    assert config.tokenizer.kind == "clip_bpe" and config.model.text.max_len == 77
    assert config.tokenizer.vocab == "data/clip/bpe_simple_vocab_16e6.txt.gz"
    config.tokenizer.vocab = str(FIXTURES / GOLDENS["small"]["vocab"])
    tokenizer = pipeline.create_tokenizer(config)
    assert tokenizer(["a person"], 77)[0].tolist() == SMALL_CLIP(["a person"], 77)[0].tolist()


CORPUS = [
    "The person is standing with the left arm raised above the head.",
    "Both knees are bent and the right arm is stretched out to the side.",
    "The torso leans forward; the head is tilted down, looking at the floor.",
    "There are 2 people in the image who are dancing.",
] * 3


def test_fitted_bpe_frames_round_trips_and_knows_every_byte() -> None:
    tok = FittedBpeTokenizer.fit(CORPUS, vocab_size=400)
    assert tok.vocab_size <= 400
    assert [tok.ids[t] for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]")] == [0, 1, 2, 3]
    text = "The  person's LEFT knee is bent — naïve 😀"
    pieces = tok.tokenize(text)
    assert tok.ids["[UNK]"] not in pieces
    assert tok.decode(pieces) == "the person's left knee is bent — naïve 😀"
    assert len(tok.tokenize("the left arm")) == 3  # frequent words are single tokens
    ids, mask = tok(["the left arm", text], max_len=6)
    assert ids[0].tolist() == [2, *tok.tokenize("the left arm"), 3, 0]
    assert mask[0].tolist() == [True] * 5 + [False]
    assert ids[1, -1] == 3 and mask[1].all() and ids.dtype == np.int32


def test_fitted_bpe_is_kept_and_reused(tmp_path) -> None:
    """Fitted in memory (nothing written before the run holds its workdir), kept by `save`
    (training's run record), then read back, never refitted; inference never fits."""
    kind = tokenizers.TOKENIZERS["fitted_bpe"]
    section = {"kind": "fitted_bpe", "vocab_size": 400, "path": ""}
    workdir = str(tmp_path / "run")
    path = tmp_path / "run" / "tokenizer.json"
    fitted = kind.create(section, corpus=lambda: CORPUS, workdir=workdir, fit=True)
    assert not path.exists()
    kind.save(fitted, section, workdir)
    assert path.is_file() and not list(path.parent.glob("*.tmp"))

    def no_refit() -> list[str]:
        raise AssertionError("a saved tokenizer must be reused, not refitted")

    reloaded = kind.create(section, corpus=no_refit, workdir=workdir, fit=False)
    assert reloaded.ids == fitted.ids
    with pytest.raises(InputDataError, match=r"--config\.tokenizer\.path=.*never fits"):
        kind.create(section, corpus=no_refit, workdir=str(tmp_path / "other"), fit=False)
    texts = ["the right knee is bent", "unseen words: xylophone"]
    assert (reloaded(texts, 16)[0] == fitted(texts, 16)[0]).all()
    assert (FittedBpeTokenizer.fit(CORPUS, 400)(texts, 16)[0] == fitted(texts, 16)[0]).all()


def test_create_tokenizer_fits_a_bpe_on_the_synthetic_corpus(tmp_path) -> None:
    config = tiny_config()
    config.tokenizer.kind = "fitted_bpe"
    config.tokenizer.vocab_size = 400
    with pytest.raises(ValueError, match=r"tokenizer\.path"):
        pipeline.create_tokenizer(config)
    config.tokenizer.path = str(tmp_path / "tokenizer.json")
    tokenizer = pipeline.create_tokenizer(config)
    assert tokenizer.vocab_size <= 400
    ids, mask = tokenizer(scenes.corpus()[:4], config.model.text.max_len)
    assert (ids[mask] != 1).all()  # no [UNK]


def test_mpii_corpus_is_the_descriptions_the_stream_can_pick(tmp_path) -> None:
    texts = [{"gpt-4": "one", "llama-2": "two"}, {"llama-2": "three"}, {}]
    described = [records.ImageRecord(f"{i}.jpg", [], descriptions=d) for i, d in enumerate(texts)]
    entries = [records.encode_prepared(record, b"jpeg") for record in described]
    shards.write_split(tmp_path, "train", entries, name=mpii.NAME)
    config = pretrain.get_config()
    config.data.prepared = str(tmp_path)
    assert config.data.description_sources == ("gpt-4",)
    assert pipeline.tokenizer_corpus(config) == ["one"]  # "three" is never streamed
    config.data.description_sources = ("gpt-4", "llama-2")
    assert pipeline.tokenizer_corpus(config) == ["one", "two", "three"]
