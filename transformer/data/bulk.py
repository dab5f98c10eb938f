"""Megabytes of text to ids, fast and equal id for id to `TextTokenizer.encode`.

HF `tokenizers` encodes about 1.5 MB/s per core here: it builds a full `Encoding` (token
strings, offsets, masks) for every text, and the char kind sees a whole chunk as one BPE "word".
Preparing a gigabyte that way takes most of an hour, so bulk work takes two shortcuts, each
exact for the tokenizers `train_tokenizer` makes (tests/data/test_bulk.py checks both against
HF on real and generated text):

- char: the kind is a pure per-character lookup (BPE with no merges), so the ids are one numpy
  gather: code points -> a table of ids. A character outside the vocabulary becomes the ids of
  its UTF-8 bytes, which is what HF's `byte_fallback` does.
- bpe: GPT-2's pre-tokenizer regex never lets a piece run from a non-space character into a
  following ASCII space or line break (every alternative that starts with a non-space character
  continues with non-space characters only), and it looks ahead but never behind. So text cut
  just before such a space is encoded piece for piece as it would be whole. Text is split at
  every such point into segments like " the" or "\\n\\nThe"; each distinct segment is encoded by
  HF once and remembered. Natural text repeats its segments, so most of the work is a dict
  lookup per word and a numpy gather.

The same boundary rule, `safe_cut`, is where a long document may be cut into chunks: the ids of
the chunks, concatenated, are the ids of the whole document. (Not just any line break will do
for byte-level BPE: "a\\n\\n\\nb" is pieced "a", "\\n\\n", "\\n", "b", but cut after its first line
break it is pieced "a", "\\n" | "\\n", "\\n", "b", and a merge of two line breaks changes the ids.)
"""

import json
import re
from itertools import repeat
from typing import Any

import numpy as np

from transformer.data.corpus import DataError
from transformer.data.tokenizer import EOT, N_BYTES, TextTokenizer, TokenizerError

Ids = np.ndarray[Any, np.dtype[Any]]

# ASCII whitespace: whitespace to every regex engine, so a cut before one is a piece boundary.
_SPACES = " \t\n\r\x0b\x0c"
# A segment: one character, then anything up to (not including) an ASCII space that follows a
# non-space character. Python's \s is str.isspace(), a superset of Unicode White_Space, so a
# character it calls non-space is non-space to HF's regex too.
_SEGMENT = re.compile(rf"(?s).[^{_SPACES}]*(?:(?<=\s)[{_SPACES}][^{_SPACES}]*)*")
DEFAULT_MEMO_ENTRIES = 1 << 19


def safe_cut(text: str, end: int) -> int:
    """The largest p in [1, end] at which `text` may be cut without changing its ids (0 if none):
    just before a line break ("\\n", else "\\r"), failing that a space, that follows a non-space
    character."""
    end = min(end, len(text) - 1)
    for mark in ("\n", "\r", " "):
        p = text.rfind(mark, 1, end + 1)
        while p > 0:
            if not text[p - 1].isspace():
                return p
            p = text.rfind(mark, 1, p)
    return 0


class BulkEncoder:
    """`encode(text)`: the ids of `text` as an array of `dtype`, as `tokenizer.encode` gives them."""

    def __init__(self, tokenizer: TextTokenizer, dtype: np.dtype[Any], memo_entries: int = DEFAULT_MEMO_ENTRIES):
        self.tokenizer = tokenizer
        self.dtype = np.dtype(dtype)
        self.vocab_size = tokenizer.vocab_size
        own = type(tokenizer).encode_batch_numpy is TextTokenizer.encode_batch_numpy
        # A subclass that encodes its own way is used as it is (slowly): the shortcuts are proven
        # equal to TextTokenizer's encoding, not to anyone else's.
        self._fast: _CharTable | _SegmentMemo | None = None
        if own:
            spec = json.loads(tokenizer.to_json())
            _check_plain(spec, tokenizer.kind)
            if tokenizer.kind == "char":
                self._fast = _CharTable(spec["model"]["vocab"])
            else:
                self._fast = _SegmentMemo(tokenizer, memo_entries)

    @property
    def cuts_anywhere(self) -> bool:
        """True when ids are per character (the char kind): any cut between characters is safe."""
        return self.tokenizer.kind == "char"

    def encode(self, text: str) -> Ids:
        if self._fast is None:
            ids = self.tokenizer.encode_batch_numpy([text])[0] if text else np.zeros(0, np.int64)
        else:
            ids = self._fast.encode(text)
        if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            bad = int(ids.max()) if int(ids.max()) >= self.vocab_size else int(ids.min())
            raise DataError(f"token id {bad} is outside the vocabulary (size {self.vocab_size})")
        return ids.astype(self.dtype, copy=False)


def _check_plain(spec: Any, kind: str) -> None:
    """The shortcuts assume what `train_tokenizer` writes; refuse a hand-edited tokenizer.json."""
    added = [token.get("content") for token in spec.get("added_tokens") or []]
    if added != [EOT]:
        raise TokenizerError(f"bulk encoding needs {EOT} as the only added token, found {added}")
    pre = spec.get("pre_tokenizer")
    if kind == "bpe":
        ok = isinstance(pre, dict) and pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
        if not ok or pre.get("add_prefix_space"):
            raise TokenizerError("bulk encoding needs GPT-2's ByteLevel pre-tokenizer (regex on, no prefix space)")


class _CharTable:
    def __init__(self, vocab: dict[str, int]) -> None:
        self.table = np.full(0x110000, -1, dtype=np.int32)
        for token, token_id in vocab.items():
            if len(token) == 1:
                self.table[ord(token)] = token_id
        self.byte_ids = np.array([vocab[f"<0x{byte:02X}>"] for byte in range(N_BYTES)], dtype=np.int32)

    def encode(self, text: str) -> Ids:
        try:
            points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        except UnicodeEncodeError as error:
            raise TokenizerError(f"cannot encode text (lone surrogate code points?): {error}") from None
        ids = self.table[points]
        unknown = ids < 0
        if not unknown.any():
            return ids
        # Each unknown character becomes the ids of its UTF-8 bytes, in order.
        odd = points[unknown]
        lengths = np.ones(len(ids), dtype=np.int64)
        lengths[unknown] = 1 + (odd >= 0x80).astype(np.int64) + (odd >= 0x800) + (odd >= 0x10000)
        spelled = np.repeat(ids, lengths)
        raw = "".join(map(chr, odd.tolist())).encode("utf-8")
        spelled[spelled < 0] = self.byte_ids[np.frombuffer(raw, dtype=np.uint8)]
        return spelled


class _SegmentMemo:
    """Segment -> ids, learned from HF on first sight; forgotten wholesale when full (it is a cache)."""

    def __init__(self, tokenizer: TextTokenizer, capacity: int) -> None:
        self.tokenizer = tokenizer
        self.capacity = capacity
        self._clear()

    def _clear(self) -> None:
        self.index: dict[str, int] = {}
        self.flat = np.zeros(1 << 16, dtype=np.int32)  # every known segment's ids, end to end
        self.starts = np.zeros(1 << 12, dtype=np.int64)
        self.lengths = np.zeros(1 << 12, dtype=np.int64)
        self.used = 0

    def encode(self, text: str) -> Ids:
        segments = _SEGMENT.findall(text)
        which = self._look_up(segments)
        missing = np.flatnonzero(which < 0).tolist()
        if missing:
            new = list(dict.fromkeys(segments[i] for i in missing))
            if len(self.index) + len(new) > self.capacity:
                self._clear()
                which = self._look_up(segments)
                missing = list(range(len(segments)))
                new = list(dict.fromkeys(segments))
            self._learn(new)
            which[missing] = [self.index[segments[i]] for i in missing]
        lengths = self.lengths[which]
        ends = np.cumsum(lengths)
        # position k of the output is flat[start of its segment + its rank within the segment]
        n_ids = int(ends[-1]) if len(ends) else 0
        positions = np.repeat(self.starts[which] - ends + lengths, lengths) + np.arange(n_ids)
        return self.flat[positions]

    def _look_up(self, segments: list[str]) -> np.ndarray[Any, np.dtype[np.int64]]:
        return np.fromiter(map(self.index.get, segments, repeat(-1)), dtype=np.int64, count=len(segments))

    def _learn(self, new: list[str]) -> None:
        encoded = self.tokenizer.encode_batch_numpy(new)
        count = len(self.index)
        need_rows, need_ids = count + len(new), self.used + sum(len(ids) for ids in encoded)
        if need_rows > len(self.starts):
            size = max(need_rows, 2 * len(self.starts))
            self.starts, self.lengths = np.resize(self.starts, size), np.resize(self.lengths, size)
        if need_ids > len(self.flat):
            self.flat = np.resize(self.flat, max(need_ids, 2 * len(self.flat)))
        for row, (segment, ids) in enumerate(zip(new, encoded, strict=True), start=count):
            self.index[segment] = row
            self.starts[row], self.lengths[row] = self.used, len(ids)
            self.flat[self.used : self.used + len(ids)] = ids
            self.used += len(ids)
