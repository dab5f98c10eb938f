"""Bulk encoding gives exactly HF's ids, and `safe_cut` is a cut that cannot change them.

The reference is always `TextTokenizer.encode` on the whole text, which is HF `tokenizers`
itself. Generated texts lean on what could break the shortcuts: runs of mixed whitespace
(ASCII, Unicode and the control characters Python calls space but Unicode does not),
contractions, digits, punctuation and characters the vocabulary has never seen."""

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transformer.data.bulk import BulkEncoder, safe_cut
from transformer.data.corpus import builtin_documents
from transformer.data.tokenizer import TextTokenizer, TokenizerError, train_tokenizer

TRICKY = list(" \t\n\r\x0b\x0c\x1c\x1f\x85\xa0\u1680\u2000\u2028\u2029\u202f\u3000\u180e\u200b\ufeff")
TRICKY += list("aZé水'sdtmlrve 0123456789٣.,!?-—\"'") + ["'s", "'ll", "\r\n", "🤖", "\u0301"]
texts = st.lists(st.sampled_from(TRICKY) | st.text(max_size=3), max_size=60).map("".join)


@pytest.fixture(scope="module")
def corpus() -> str:
    return "\n\n".join(builtin_documents()[:20])


@pytest.fixture(scope="module", params=["char", "bpe"])
def tokenizer(request: pytest.FixtureRequest, corpus: str) -> TextTokenizer:
    kind = request.param
    return train_tokenizer(kind, [corpus], vocab_size=None if kind == "char" else 700)


def _chunks(text: str, size: int, cuts_anywhere: bool = False) -> list[str]:
    """`text` cut greedily into chunks of at most about `size` characters at safe cuts."""
    chunks = []
    while len(text) > size:
        cut = safe_cut(text, size) or (size if cuts_anywhere else 0)
        if cut == 0:
            break
        chunks.append(text[:cut])
        text = text[cut:]
    return [*chunks, text]


def test_bulk_ids_equal_hf_on_real_text(tokenizer: TextTokenizer, corpus: str) -> None:
    encoder = BulkEncoder(tokenizer, np.dtype(np.uint16))
    text = corpus + "\nUnseen: 🤖 水 ٣ \u3000end"  # characters the char vocabulary lacks
    ids = encoder.encode(text)
    assert ids.dtype == np.uint16
    np.testing.assert_array_equal(ids, tokenizer.encode(text))
    np.testing.assert_array_equal(encoder.encode(text), ids)  # a second pass, from the memo, agrees


@pytest.fixture(scope="module")
def small_memo_encoder(tokenizer: TextTokenizer) -> BulkEncoder:
    return BulkEncoder(tokenizer, np.dtype(np.uint32), memo_entries=50)  # small: the memo is cleared often


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=texts)
def test_bulk_ids_equal_hf_on_generated_text(
    tokenizer: TextTokenizer, small_memo_encoder: BulkEncoder, text: str
) -> None:
    assert small_memo_encoder.encode(text).tolist() == tokenizer.encode(text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=texts, size=st.integers(1, 12))
def test_chunks_cut_at_safe_cuts_encode_to_the_whole_texts_ids(tokenizer: TextTokenizer, text: str, size: int) -> None:
    chunks = _chunks(text, size, cuts_anywhere=tokenizer.kind == "char")
    assert "".join(chunks) == text
    assert [i for chunk in chunks for i in tokenizer.encode(chunk)] == tokenizer.encode(text)


@pytest.mark.parametrize("size", [1_000])
def test_a_long_document_in_chunks_has_the_whole_documents_ids(
    tokenizer: TextTokenizer, corpus: str, size: int
) -> None:
    chunks = _chunks(corpus, size)
    assert len(chunks) > len(corpus) // (2 * size) and "".join(chunks) == corpus
    encoder = BulkEncoder(tokenizer, np.dtype(np.uint16))
    whole = tokenizer.encode(corpus)
    np.testing.assert_array_equal(np.concatenate([encoder.encode(chunk) for chunk in chunks]), whole)


def test_cutting_after_any_line_break_would_change_bpe_ids(corpus: str) -> None:
    """The control: the cut rule matters. In indented text the whole text has the piece
    "\\n   " (which this corpus's BPE merges into one token); cut after the line break, the
    pieces are "\\n" and "    ", and the ids change."""
    bpe = train_tokenizer("bpe", [corpus], vocab_size=700)
    text = "word\n    next"
    naive = bpe.encode("word\n") + bpe.encode("    next")
    assert naive != bpe.encode(text)
    cut = safe_cut(text, 8)
    assert cut == 4 and bpe.encode(text[:cut]) + bpe.encode(text[cut:]) == bpe.encode(text)


def test_safe_cut_prefers_line_breaks_after_text_and_never_cuts_inside_whitespace() -> None:
    assert safe_cut("ab cd\nef gh", 10) == 5  # the line break, though a later space exists
    assert safe_cut("ab cd ef", 7) == 5  # no line break: the last space after text
    assert safe_cut("ab  \n\ncd", 7) == 2  # both line breaks follow whitespace: the space after "ab"
    assert safe_cut(" \n\n  x y", 5) == 0  # every break within reach follows whitespace
    assert safe_cut("abc", 10) == 0


def test_lone_surrogates_are_a_tokenizer_error(tokenizer: TextTokenizer) -> None:
    with pytest.raises(TokenizerError, match="lone surrogate"):
        BulkEncoder(tokenizer, np.dtype(np.uint16)).encode("a\ud800b c")


class _Shifted(TextTokenizer):
    """Encodes differently from its base: bulk encoding must use it, not the shortcut."""

    def encode_batch_numpy(self, texts: list[str]) -> list[np.ndarray[Any, np.dtype[np.int64]]]:
        return [(ids + 1) % self.vocab_size for ids in super().encode_batch_numpy(texts)]


def test_a_subclass_that_encodes_its_own_way_is_used_as_it_is(tokenizer: TextTokenizer) -> None:
    shifted = _Shifted(tokenizer._hf, tokenizer.kind)
    expected = [(i + 1) % tokenizer.vocab_size for i in tokenizer.encode("some text")]
    assert BulkEncoder(shifted, np.dtype(np.uint16)).encode("some text").tolist() == expected


def test_a_hand_edited_bpe_that_adds_a_prefix_space_is_refused(corpus: str) -> None:
    bpe = train_tokenizer("bpe", [corpus[:20_000]], vocab_size=300)
    edited = bpe.to_json().replace('"add_prefix_space":false', '"add_prefix_space":true')
    assert edited != bpe.to_json()
    with pytest.raises(TokenizerError, match="prefix space"):
        BulkEncoder(TextTokenizer.from_json(edited), np.dtype(np.uint16))
