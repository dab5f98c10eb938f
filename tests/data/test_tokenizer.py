"""Tokenizers: lossless on any text, the vocabulary they promise, stable files and hashes, and an
analysis whose suggested vocab size is checked against tokenizers actually trained at that size."""

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from transformer.data.corpus import builtin_documents
from transformer.data.tokenizer import (
    EOT,
    TextTokenizer,
    TokenizerError,
    _byte_level_symbols,
    analyze,
    train_tokenizer,
)

BPE_SIZE = 1024


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return builtin_documents()


@pytest.fixture(scope="module")
def char_tokenizer(corpus: list[str]) -> TextTokenizer:
    return train_tokenizer("char", corpus)


@pytest.fixture(scope="module")
def bpe_tokenizer(corpus: list[str]) -> TextTokenizer:
    return train_tokenizer("bpe", corpus, BPE_SIZE)


@pytest.fixture(scope="module", params=["char", "bpe"])
def tokenizer(
    request: pytest.FixtureRequest, char_tokenizer: TextTokenizer, bpe_tokenizer: TextTokenizer
) -> TextTokenizer:
    return char_tokenizer if request.param == "char" else bpe_tokenizer


HARD_TEXTS = [
    "",
    "plain ascii, with punctuation: (x) -> [y]; {z}!",
    "accents: héllo wörld, façade, Ångström, naïve",
    "CJK: 日本語のテキスト 中文 한국어",
    "emoji: 🤖 👩‍👩‍👧 🇫🇷 ✋🏽",
    "combining marks: e\u0301 a\u0308\u0304 Z\u0335\u0321\u034e",
    "whitespace:\n\n\ttab\r\nCRLF   spaces\u00a0nbsp\u2028line-sep\x0bvt",
    "control bytes: \x00\x01\x1f\x7f and RTL: שלום עולם مرحبا",
    f"a literal {EOT} inside text, and <|endoftext half",
    "\U0010ffff private-use \ue000 and noncharacter \ufffe",
]


@pytest.mark.parametrize("text", HARD_TEXTS)
def test_round_trip_is_lossless_on_hard_text(tokenizer: TextTokenizer, text: str) -> None:
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert all(0 <= i < tokenizer.vocab_size for i in ids)
    # Every token stands for exact bytes: together they are the text's UTF-8, nothing lost or added.
    assert b"".join(tokenizer.token_bytes(i) for i in ids) == text.encode("utf-8")


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=60))
def test_round_trip_is_lossless_on_any_unicode(tokenizer: TextTokenizer, text: str) -> None:
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_encode_batch_equals_encode(tokenizer: TextTokenizer) -> None:
    expected = [tokenizer.encode(text) for text in HARD_TEXTS]
    assert tokenizer.encode_batch(HARD_TEXTS) == expected
    assert [ids.tolist() for ids in tokenizer.encode_batch_numpy(HARD_TEXTS)] == expected


def test_end_of_text_only_comes_from_its_id(tokenizer: TextTokenizer) -> None:
    """Text that spells "<|endoftext|>" must not forge a document boundary."""
    assert tokenizer.eot_id not in tokenizer.encode(f"one{EOT}two")
    assert tokenizer.decode([*tokenizer.encode("end"), tokenizer.eot_id]) == f"end{EOT}"


def test_lone_surrogate_is_a_clear_error(tokenizer: TextTokenizer) -> None:
    with pytest.raises(TokenizerError, match="surrogate"):
        tokenizer.encode("a\ud800b")


def test_char_tokenizer_is_one_token_per_seen_character(corpus: list[str], char_tokenizer: TextTokenizer) -> None:
    seen = set("".join(corpus))
    assert char_tokenizer.vocab_size == 256 + 1 + len(seen)
    text = corpus[0][:500]
    assert len(char_tokenizer.encode(text)) == len(text)


def test_char_tokenizer_orders_by_frequency_and_spells_unseen_in_bytes() -> None:
    tokenizer = train_tokenizer("char", ["abbccc", "c"])
    assert tokenizer.eot_id == 256
    assert tokenizer.encode("cba") == [257, 258, 259]  # c (4 times), b (2), a (1)
    assert tokenizer.encode("é") == [0xC3, 0xA9]  # byte ids are the byte values
    capped = train_tokenizer("char", ["abbccc", "c"], vocab_size=258)  # room for one character: "c"
    assert capped.vocab_size == 258
    assert capped.encode("cba") == [257, ord("b"), ord("a")]
    assert capped.decode(capped.encode("cba")) == "cba"
    assert tokenizer.truncated(258).encode("cba") == capped.encode("cba")  # truncating = training smaller


def test_bpe_has_exactly_the_asked_size_with_eot_and_every_byte(bpe_tokenizer: TextTokenizer) -> None:
    assert bpe_tokenizer.vocab_size == BPE_SIZE
    vocab = json.loads(bpe_tokenizer.to_json())["model"]["vocab"]
    assert len(vocab) == BPE_SIZE and sorted(vocab.values()) == list(range(BPE_SIZE))
    assert vocab[EOT] == bpe_tokenizer.eot_id
    assert set(pre_tokenizers.ByteLevel.alphabet()) <= set(vocab)


def test_bpe_stops_early_when_no_pair_repeats() -> None:
    """min_frequency=2: on a tiny corpus there are few pairs worth merging, so the vocab is smaller."""
    tokenizer = train_tokenizer("bpe", ["ab ab ab"], vocab_size=1000)
    assert 257 < tokenizer.vocab_size < 1000
    assert tokenizer.decode(tokenizer.encode("ab 🤖")) == "ab 🤖"


def test_bpe_compresses_text(corpus: list[str], bpe_tokenizer: TextTokenizer) -> None:
    text = "\n".join(corpus[:5])
    assert len(bpe_tokenizer.encode(text)) < len(text) / 2, "a 1024-token BPE averages > 2 chars per token"


def test_byte_symbol_table_is_hf_byte_level_alphabet() -> None:
    table = _byte_level_symbols()
    assert set(table) == set(pre_tokenizers.ByteLevel.alphabet())
    assert sorted(table.values()) == list(range(256))
    assert table["A"] == ord("A") and table["Ġ"] == ord(" ") and table["Ċ"] == ord("\n")


def test_save_load_and_json_round_trips_give_identical_tokenizers(tokenizer: TextTokenizer, tmp_path: Path) -> None:
    tokenizer.save(tmp_path / "tok.json")
    tokenizer.save(tmp_path)  # a folder: writes tokenizer.json inside
    copies = [
        TextTokenizer.load(tmp_path / "tok.json"),
        TextTokenizer.load(tmp_path),
        TextTokenizer.from_json(tokenizer.to_json()),
    ]
    for copy in copies:
        assert copy.kind == tokenizer.kind
        assert (copy.vocab_size, copy.eot_id) == (tokenizer.vocab_size, tokenizer.eot_id)
        assert copy.encode_batch(HARD_TEXTS) == tokenizer.encode_batch(HARD_TEXTS)
        assert copy.fingerprint() == tokenizer.fingerprint()
        assert copy.eot_id not in copy.encode(EOT)  # the text-is-text rule survives a reload
    assert not list(tmp_path.glob("*.tmp"))


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="no tokenizer file at .*missing.json"):
        TextTokenizer.load(tmp_path / "missing.json")
    (tmp_path / "corrupt.json").write_text('{"model": ')
    with pytest.raises(TokenizerError, match="corrupt.json: not a valid tokenizer.json"):
        TextTokenizer.load(tmp_path / "corrupt.json")
    no_bytes = Tokenizer(models.BPE(vocab={"a": 0, EOT: 1}, merges=[]))
    no_bytes.pre_tokenizer = pre_tokenizers.ByteLevel()
    no_bytes.decoder = decoders.ByteLevel()
    (tmp_path / "lossy.json").write_text(no_bytes.to_str())
    with pytest.raises(TokenizerError, match="lossy.json: lacks .* byte tokens"):
        TextTokenizer.load(tmp_path / "lossy.json")
    word_level = Tokenizer(models.WordLevel(vocab={"[UNK]": 0, EOT: 1}, unk_token="[UNK]"))
    (tmp_path / "words.json").write_text(word_level.to_str())
    with pytest.raises(TokenizerError, match="words.json: expected a BPE model"):
        TextTokenizer.load(tmp_path / "words.json")


def test_fingerprint_is_stable_and_tracks_the_vocabulary(corpus: list[str], bpe_tokenizer: TextTokenizer) -> None:
    # Training is deterministic, so retraining gives the same hash (and caches keyed by it are reused).
    assert train_tokenizer("bpe", corpus, BPE_SIZE).fingerprint() == bpe_tokenizer.fingerprint()
    assert train_tokenizer("bpe", corpus, BPE_SIZE + 1).fingerprint() != bpe_tokenizer.fingerprint()
    assert train_tokenizer("char", ["abc"]).fingerprint() != train_tokenizer("char", ["abd"]).fingerprint()


@pytest.mark.parametrize(
    ("kind", "documents", "vocab_size", "message"),
    [
        ("word", ["abc"], None, "kind must be one of"),
        ("bpe", ["abc"], 256, "at least 257"),
        ("char", ["abc"], 100, "at least 257"),
        ("bpe", ["abc"], None, "needs a vocab size"),
        ("char", [], None, "empty corpus"),
        ("bpe", ["", ""], 300, "empty corpus"),
    ],
)
def test_training_rejects_bad_requests(kind: str, documents: list[str], vocab_size: int | None, message: str) -> None:
    with pytest.raises(TokenizerError, match=message):
        train_tokenizer(kind, documents, vocab_size)


def test_truncating_a_bpe_equals_training_it_smaller(corpus: list[str], bpe_tokenizer: TextTokenizer) -> None:
    """The fact `analyze` builds on: the first V ids of a trained BPE are the BPE trained with size V."""
    smaller = train_tokenizer("bpe", corpus, 320)
    truncated = bpe_tokenizer.truncated(320)
    assert truncated.vocab_size == 320
    assert truncated.encode_batch(corpus[:10]) == smaller.encode_batch(corpus[:10])


def test_analyze_reports_exact_counts_for_a_char_tokenizer() -> None:
    """19 characters seen 30 times, then "y" 3 times and "z" 2 times; min_count 20, coverage 95%.
    With 20 learned characters 19/20 = 95% are frequent (enough); with 21, 19/21 = 90% (not)."""
    frequent = "ABCDEFGHIJKLMNOPQRS"
    documents = [frequent * 30, "yyyzz"]
    tokenizer = train_tokenizer("char", documents)
    report = analyze(tokenizer, documents, min_count=20)
    assert report["vocab_size"] == 257 + 21
    assert report["characters"] == report["tokens"] == 19 * 30 + 5
    assert report["tokens_per_char"] == report["chars_per_token"] == 1.0
    assert report["vocab_used"] == 21
    assert report["unused_tokens"] == 257  # the 256 byte fallbacks and end-of-text
    assert report["rare_tokens"] == 257 + 2
    assert report["rare_learned_fraction"] == pytest.approx(2 / 21)
    assert report["suggested_vocab_size"] == 257 + 20
    assert report["suggestion_capped"] == 0


def test_analyze_suggestion_is_the_largest_size_the_corpus_supports(corpus: list[str]) -> None:
    """Checked with tokenizers trained at the suggested size and at the next candidate (64 more):
    the first has >= 95% of its learned tokens seen >= 20 times in the corpus, the second has not.
    (Half the built-in corpus, to halve the time.)"""
    documents = corpus[::2]
    tokenizer = train_tokenizer("bpe", documents, 768)
    report = analyze(tokenizer, documents)
    suggested = int(report["suggested_vocab_size"])
    assert 257 < suggested < 768 and suggested % 64 == 0

    def frequent_fraction(size: int) -> float:
        ids = np.concatenate(train_tokenizer("bpe", documents, size).encode_batch_numpy(documents))
        return float((np.bincount(ids, minlength=size)[257:] >= 20).mean())

    assert frequent_fraction(suggested) >= 0.95
    assert frequent_fraction(suggested + 64) < 0.95
    n_characters = sum(len(document) for document in documents)
    n_tokens = sum(len(ids) for ids in tokenizer.encode_batch_numpy(documents))
    assert report["tokens"] == n_tokens and report["characters"] == n_characters
    assert report["chars_per_token"] == pytest.approx(n_characters / n_tokens)
    assert float(report["chars_per_token"]) > 2.0, "a BPE of hundreds of tokens averages > 2 chars per token"


def test_analyze_caps_the_suggestion_at_the_vocabulary() -> None:
    documents = ["abc" * 30]
    tokenizer = train_tokenizer("char", documents)
    report = analyze(tokenizer, documents, min_count=20)
    assert report["suggested_vocab_size"] == tokenizer.vocab_size and report["suggestion_capped"] == 1


def test_analyze_rejects_an_empty_corpus(char_tokenizer: TextTokenizer) -> None:
    with pytest.raises(TokenizerError, match="empty corpus"):
        analyze(char_tokenizer, ["", ""])
