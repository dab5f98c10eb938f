"""Text to token ids and back: a character tokenizer and a byte-level BPE, both lossless.

A language model sees integers, so the tokenizer decides what one prediction step is: a
character, or a frequent chunk of bytes. Both kinds here are built from Hugging Face
`tokenizers` primitives (fast Rust, one `tokenizer.json` file format) and share one promise:
`decode(encode(s)) == s` for ANY Unicode string, because every kind keeps all 256 bytes in its
vocabulary. A character the training corpus never showed is spelled as its UTF-8 bytes instead
of being dropped or turned into `<unk>` (without the byte alphabet, HF's BPE silently drops it:
"wörld" becomes "wrld").

- "char": a `models.BPE` with *no merges* and `byte_fallback=True`. With no merges, BPE splits
  text into single characters and looks each one up; `byte_fallback` spells any character not in
  the vocabulary as `<0xNN>` byte tokens, and the `ByteFallback` + `Fuse` decoders join those
  bytes back into the character. This is the SentencePiece/Llama mechanism with merges turned
  off, so it needs no code of ours on the hot path. Ids: 0-255 the bytes, 256 the
  end-of-text token, then the corpus's characters, most frequent first.
- "bpe": GPT-2's byte-level BPE. The `ByteLevel` pre-tokenizer maps each byte to a printable
  symbol and splits text into word-like pieces; BPE then learns merges of frequent symbol pairs.
  The trainer is given the whole 256-symbol byte alphabet, so no byte is ever missing. Ids: 0 the
  end-of-text token, 1-256 the byte symbols, then the merges in the order they were learned.

In both kinds the ids after the fixed block (bytes + end-of-text) are in priority order, so the
first V ids of a tokenizer are the tokenizer one would have trained with vocab size V. `analyze`
uses that to suggest a vocabulary size.

The end-of-text token `<|endoftext|>` separates documents in the token stream. It is only ever
produced by id (the data pipeline appends `eot_id` after each document): a document that happens
to contain the text "<|endoftext|>" is encoded as ordinary characters, so data cannot forge a
document boundary.
"""

import hashlib
import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from transformer.errors import UserError

EOT = "<|endoftext|>"
KINDS = ("char", "bpe")
N_BYTES = 256
MIN_VOCAB_SIZE = N_BYTES + 1  # the byte alphabet and the end-of-text token
DEFAULT_MIN_COUNT = 20
DEFAULT_COVERAGE = 0.95


class TokenizerError(UserError, ValueError):
    """A tokenizer that cannot be built, read or used; the message says which file or value and why."""


class TextTokenizer:
    """A lossless tokenizer: an HF `Tokenizer` plus the kind it is and the id of `<|endoftext|>`."""

    def __init__(self, hf_tokenizer: Tokenizer, kind: str) -> None:
        if kind not in KINDS:
            raise TokenizerError(f"tokenizer kind must be one of {KINDS}, got {kind!r}")
        eot_id = hf_tokenizer.token_to_id(EOT)
        if eot_id is None:
            raise TokenizerError(f"the tokenizer has no {EOT} token, which separates documents")
        # Text is text: "<|endoftext|>" inside a document is encoded as characters (see module doc).
        # HF does not save this flag in tokenizer.json, so it is set on every construction.
        hf_tokenizer.encode_special_tokens = True
        self._hf = hf_tokenizer
        self.kind = kind
        self._eot_id = int(eot_id)
        # max id + 1, not HF's entry count: the embedding table needs a row for every id.
        self._vocab_size = max(hf_tokenizer.get_vocab(with_added_tokens=True).values()) + 1

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def eot_id(self) -> int:
        return self._eot_id

    def encode(self, text: str) -> list[int]:
        try:
            return list(self._hf.encode(text, add_special_tokens=False).ids)
        except TypeError as error:  # HF's message for a lone surrogate, which UTF-8 cannot hold
            raise TokenizerError(f"cannot encode text (lone surrogate code points?): {error}") from None

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Many texts at once, in parallel threads (much faster than a loop of `encode`)."""
        try:
            # `_fast` skips computing character offsets, which ids do not need.
            encodings = self._hf.encode_batch_fast(texts, add_special_tokens=False)
        except TypeError as error:
            raise TokenizerError(f"cannot encode text (lone surrogate code points?): {error}") from None
        return [list(encoding.ids) for encoding in encodings]

    def encode_batch_numpy(self, texts: list[str]) -> list[np.ndarray[Any, np.dtype[np.int64]]]:
        """`encode_batch` as int64 arrays: what bulk work (caching a corpus, counting tokens) wants,
        and cheap to type-check at runtime (one isinstance per text, not one per id)."""
        try:
            encodings = self._hf.encode_batch_fast(texts, add_special_tokens=False)
        except TypeError as error:
            raise TokenizerError(f"cannot encode text (lone surrogate code points?): {error}") from None
        return [np.asarray(encoding.ids, dtype=np.int64) for encoding in encodings]

    def decode(self, ids: list[int]) -> str:
        """The text of `ids`; `<|endoftext|>` is kept, so samples show where a document ended."""
        return str(self._hf.decode(ids, skip_special_tokens=False))

    def token(self, token_id: int) -> str:
        """The vocabulary entry of one id as HF stores it (byte-level symbols like 'Ġthe', or '<0xE2>')."""
        token = self._hf.id_to_token(token_id)
        if token is None:
            raise TokenizerError(f"id {token_id} is not in the vocabulary (size {self.vocab_size})")
        return str(token)

    def token_bytes(self, token_id: int) -> bytes:
        """The exact UTF-8 bytes one token stands for: a token can be part of a character."""
        token = self.token(token_id)
        if token_id == self.eot_id:
            return token.encode()
        if self.kind == "bpe":
            return bytes(_BYTE_OF_SYMBOL[symbol] for symbol in token)
        if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            return bytes([int(token[3:5], 16)])
        return token.encode()

    def to_json(self) -> str:
        """The whole tokenizer as HF's tokenizer.json text, to store inside a checkpoint."""
        return str(self._hf.to_str())

    @classmethod
    def from_json(cls, text: str) -> "TextTokenizer":
        try:
            spec = json.loads(text)
            hf_tokenizer = Tokenizer.from_str(text)
        except Exception as error:  # HF raises a bare Exception for malformed files
            raise TokenizerError(f"not a valid tokenizer.json: {_one_line(error)}") from None
        return cls(hf_tokenizer, _kind_of(spec))

    def save(self, path: Path) -> None:
        """Writes tokenizer.json to `path` (inside it, if `path` is a folder), atomically."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                file.write(self.to_json())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> "TextTokenizer":
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise TokenizerError(f"no tokenizer file at {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise TokenizerError(f"cannot read tokenizer {path}: {_one_line(error)}") from None
        try:
            return cls.from_json(text)
        except TokenizerError as error:
            raise TokenizerError(f"{path}: {error}") from None

    def fingerprint(self) -> str:
        """A hash of everything that decides the ids (vocab, merges, rules): equal iff same encoding."""
        canonical = json.dumps(json.loads(self.to_json()), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(f"{self.kind}\n{canonical}".encode()).hexdigest()

    def truncated(self, size: int) -> "TextTokenizer":
        """The same tokenizer keeping its fixed tokens and only the first learned ones, `size` ids in all.

        For a tokenizer trained here this equals training with vocab_size=`size` (BPE learns
        merges greedily, most frequent first; the char kind keeps its most frequent characters).
        Ids are kept, so they match the full tokenizer's.
        """
        spec = json.loads(self.to_json())
        fixed = _fixed_ids(self)
        learned = sorted(set(range(self.vocab_size)) - fixed)
        n_learned = size - len(fixed)
        if not 0 <= n_learned <= len(learned):
            raise TokenizerError(f"size must be between {len(fixed)} and {self.vocab_size}, got {size}")
        keep = fixed | set(learned[:n_learned])
        vocab = spec["model"]["vocab"]
        spec["model"]["vocab"] = {token: i for token, i in vocab.items() if i in keep}
        kept_merges = []
        for merge in spec["model"]["merges"]:
            left, right = merge.split(" ") if isinstance(merge, str) else merge
            if all(vocab.get(token, -1) in keep for token in (left, right, left + right)):
                kept_merges.append(merge)
        spec["model"]["merges"] = kept_merges
        return TextTokenizer.from_json(json.dumps(spec))


def train_tokenizer(kind: str, documents: Sequence[str], vocab_size: int | None = None) -> TextTokenizer:
    """Learns a tokenizer from `documents`.

    char: one token per character seen (all of them if `vocab_size` is None, else the
    `vocab_size - 257` most frequent; the rest are spelled in bytes).
    bpe: byte-level BPE with at most `vocab_size` entries, counting the 256 bytes and
    `<|endoftext|>`. It has exactly `vocab_size` unless the corpus runs out of pairs that occur
    at least twice first (then it is smaller: `.vocab_size` tells the truth).
    """
    if kind not in KINDS:
        raise TokenizerError(f"tokenizer kind must be one of {', '.join(KINDS)}; got {kind!r}")
    if vocab_size is not None and vocab_size < MIN_VOCAB_SIZE:
        raise TokenizerError(f"vocab size must be at least {MIN_VOCAB_SIZE} (256 bytes + {EOT}), got {vocab_size}")
    if not any(documents):
        raise TokenizerError("cannot train a tokenizer on an empty corpus")
    if kind == "char":
        return _train_char(documents, vocab_size)
    if vocab_size is None:
        raise TokenizerError("a bpe tokenizer needs a vocab size (e.g. 1024)")
    return _train_bpe(documents, vocab_size)


def _train_char(documents: Sequence[str], vocab_size: int | None) -> TextTokenizer:
    counts: Counter[str] = Counter()
    for document in documents:
        counts.update(document)
    by_frequency = sorted(counts, key=lambda character: (-counts[character], character))
    if vocab_size is not None:
        by_frequency = by_frequency[: vocab_size - MIN_VOCAB_SIZE]
    vocab = {_byte_token(byte): byte for byte in range(N_BYTES)}
    vocab[EOT] = N_BYTES
    for offset, character in enumerate(by_frequency):
        vocab[character] = MIN_VOCAB_SIZE + offset
    hf_tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True))
    hf_tokenizer.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    hf_tokenizer.add_special_tokens([EOT])
    return TextTokenizer(hf_tokenizer, "char")


def _train_bpe(documents: Sequence[str], vocab_size: int) -> TextTokenizer:
    hf_tokenizer = Tokenizer(models.BPE())
    hf_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf_tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,  # a pair seen once is not a pattern
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: nothing is ever dropped
        show_progress=False,
    )
    hf_tokenizer.train_from_iterator(documents, trainer, length=len(documents))
    return TextTokenizer(hf_tokenizer, "bpe")


def analyze(
    tokenizer: TextTokenizer,
    documents: Sequence[str],
    min_count: int = DEFAULT_MIN_COUNT,
    coverage: float = DEFAULT_COVERAGE,
) -> dict[str, float | int | str]:
    """How well `tokenizer` fits `documents`, and a vocabulary size the corpus can support.

    A token's embedding (and its output logit) only learns from the positions where the token
    occurs, so a token seen a handful of times stays close to its random initialisation: it wastes
    parameters and its predictions are poor. The suggestion is the largest vocabulary size at
    which almost all (`coverage`, 95%) of the learned tokens (everything but the 256 bytes and
    `<|endoftext|>`) occur at least `min_count` (20) times when the corpus is encoded with that
    vocabulary. Sizes are tried by binary search over multiples of 64 for BPE (every size for
    char), encoding the corpus with `truncated(size)`; it assumes the rare fraction grows with
    the size, which it does roughly, since a bigger vocabulary cuts the corpus into more, rarer
    pieces. The suggestion cannot exceed the tokenizer's own size: when it equals it, analyze a
    larger tokenizer to see whether the corpus supports more.
    """
    if min_count < 1:
        raise TokenizerError(f"min_count must be at least 1, got {min_count}")
    if not 0.0 < coverage <= 1.0:
        raise TokenizerError(f"coverage must be in (0, 1], got {coverage}")
    texts = [document for document in documents if document]
    if not texts:
        raise TokenizerError("cannot analyze an empty corpus")
    counts = _token_counts(tokenizer, texts, tokenizer.vocab_size)
    n_tokens = int(counts.sum())
    n_characters = sum(len(text) for text in texts)
    fixed = _fixed_ids(tokenizer)
    learned = sorted(set(range(tokenizer.vocab_size)) - fixed)
    rare_learned = float((counts[learned] < min_count).mean()) if learned else 0.0
    step = 1 if tokenizer.kind == "char" else 64

    def supported(size: int) -> bool:
        """Are >= coverage of the learned tokens frequent when the corpus is cut with `size` ids?"""
        n_learned = size - len(fixed)
        if n_learned == 0:
            return True  # only bytes and end-of-text: nothing learned, nothing rare
        if tokenizer.kind == "char" or size == tokenizer.vocab_size:
            candidate_counts = counts  # a character's count does not depend on which others are kept
        else:  # BPE: fewer merges leave the pieces of the dropped tokens, so count again
            candidate_counts = _token_counts(tokenizer.truncated(size), texts, tokenizer.vocab_size)
        return float((candidate_counts[learned[:n_learned]] >= min_count).mean()) >= coverage

    suggested = _largest_supported(len(fixed), tokenizer.vocab_size, step, supported)
    sizes = "size" if step == 1 else f"size (multiple of {step})"
    return {
        "kind": tokenizer.kind,
        "vocab_size": tokenizer.vocab_size,
        "documents": len(texts),
        "characters": n_characters,
        "tokens": n_tokens,
        "tokens_per_char": n_tokens / n_characters,
        "chars_per_token": n_characters / n_tokens,
        "vocab_used": int((counts > 0).sum()),
        "vocab_used_fraction": float((counts > 0).mean()),
        "min_count": min_count,
        "rare_tokens": int((counts < min_count).sum()),
        "unused_tokens": int((counts == 0).sum()),
        "rare_learned_fraction": rare_learned,
        "suggested_vocab_size": suggested,
        "suggestion_rule": (
            f"largest {sizes} at which >= {coverage:.0%} of learned tokens occur >= {min_count} times in the corpus"
        ),
        "suggestion_capped": int(suggested == tokenizer.vocab_size),
    }


def _largest_supported(smallest: int, largest: int, step: int, supported: Callable[[int], bool]) -> int:
    """Binary search over {smallest, multiples of step, largest} for the last size `supported` accepts."""
    sizes: list[int] = sorted({smallest, largest, *range(step * (smallest // step + 1), largest, step)})
    if supported(sizes[-1]):
        return sizes[-1]
    low, high = 0, len(sizes) - 1  # invariant: sizes[low] supported (smallest always is), sizes[high] not
    while high - low > 1:
        middle = (low + high) // 2
        if supported(sizes[middle]):
            low = middle
        else:
            high = middle
    return sizes[low]


def _token_counts(tokenizer: TextTokenizer, texts: list[str], minlength: int) -> np.ndarray[Any, np.dtype[np.int64]]:
    counts = np.zeros(max(minlength, tokenizer.vocab_size), dtype=np.int64)
    for ids in tokenizer.encode_batch_numpy(texts):
        counts += np.bincount(ids, minlength=len(counts))
    return counts


def _fixed_ids(tokenizer: TextTokenizer) -> set[int]:
    """Ids every tokenizer of its kind keeps whatever its size: the 256 bytes and the special tokens."""
    vocab: dict[str, int] = tokenizer._hf.get_vocab(with_added_tokens=True)
    if tokenizer.kind == "bpe":
        byte_tokens = set(_BYTE_OF_SYMBOL)
    else:
        byte_tokens = {_byte_token(byte) for byte in range(N_BYTES)}
    special = {token.content for token in tokenizer._hf.get_added_tokens_decoder().values()}
    return {i for token, i in vocab.items() if token in byte_tokens or token in special}


def _kind_of(spec: Any) -> str:
    """Which kind a tokenizer.json is, checked strictly enough that round-trips stay lossless."""
    model = spec.get("model") if isinstance(spec, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE":
        raise TokenizerError("expected a BPE model (what `transformer tokenizer train` writes)")
    if spec.get("normalizer") is not None:
        raise TokenizerError("has a normalizer, which changes text: decode(encode(s)) would differ from s")
    vocab = model.get("vocab", {})
    pre_tokenizer, decoder = spec.get("pre_tokenizer") or {}, spec.get("decoder") or {}
    if model.get("byte_fallback") and not pre_tokenizer and not model.get("merges"):
        kind, byte_tokens = "char", [_byte_token(byte) for byte in range(N_BYTES)]
    elif pre_tokenizer.get("type") == "ByteLevel" and decoder.get("type") == "ByteLevel":
        kind, byte_tokens = "bpe", list(_BYTE_OF_SYMBOL)
    else:
        raise TokenizerError("neither a char tokenizer (byte-fallback, no merges) nor a byte-level BPE")
    missing = [token for token in byte_tokens if token not in vocab]
    if missing:
        raise TokenizerError(f"lacks {len(missing)} of the 256 byte tokens (e.g. {missing[0]!r}): not lossless")
    return kind


def _byte_token(byte: int) -> str:
    return f"<0x{byte:02X}>"


def _byte_level_symbols() -> dict[str, int]:
    """GPT-2's byte -> printable symbol table, inverted: bytes that print as themselves keep their
    character; the other 68 (controls, space, a few Latin-1 ones) get chr(256), chr(257), ... in order.
    This is how byte-level BPE stores bytes as text; the tests check it against HF's alphabet."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    symbols: dict[str, int] = {}
    shifted = 0
    for byte in range(N_BYTES):
        if byte in printable:
            symbols[chr(byte)] = byte
        else:
            symbols[chr(N_BYTES + shifted)] = byte
            shifted += 1
    return symbols


_BYTE_OF_SYMBOL = _byte_level_symbols()


def _one_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
