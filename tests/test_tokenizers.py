"""Tokenizers: framing, truncation, and BERT WordPiece on a hand-written vocabulary."""

import numpy as np
import pytest

from input_pipeline.tokenizers import BertWordPieceTokenizer, WordTokenizer, bert_basic_split


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


def test_bert_wordpiece_greedy_longest_match(tmp_path) -> None:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "un", "##aff", "##able", "runn", "##ing", "a", ","]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertWordPieceTokenizer(tmp_path / "vocab.txt")
    # The example from BERT's own WordpieceTokenizer docstring.
    assert tok.tokenize("unaffable") == [4, 5, 6]
    assert tok.tokenize("Running, a xyz") == [7, 8, 10, 9, 1]
    ids, mask = tok(["unaffable"], max_len=8)
    assert ids[0].tolist() == [2, 4, 5, 6, 3, 0, 0, 0]
    assert mask[0].sum() == 5
