"""Documents in, token windows out: a corpus's tokens prepared once on disk, sampled by memmap.

Training reads millions of random windows; re-tokenising text each time would dominate the run.
So the corpus is tokenised once into a prepared-tokens folder (transformer/data/shards.py: shard
files of raw `uint16`/`uint32` ids and a manifest), which `np.memmap` maps straight from disk (a
corpus larger than memory still works), and a window is a slice of the token stream.

The token stream is every document's ids followed by `<|endoftext|>`:
`doc0 EOT doc1 EOT doc2 EOT ...`. Windows cross document boundaries on purpose (no padding,
no wasted positions); the EOT tells the model that what follows is unrelated, and since EOT is
also a training target the model learns when a text ends.

The validation split is chosen when the folder is opened, so one preparation serves any
`val_fraction`: round(n * val_fraction) whole documents spread evenly (`validation_documents`),
or, for a corpus of one document, its last tokens. Train and val are each the rest of the stream
end to end (`TokenStream`), exactly the arrays one would get by concatenating those documents.
"""

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from transformer.data.corpus import DataError
from transformer.data.prepare import PrepareSettings, prepare_tokens, recipe
from transformer.data.shards import TOKENIZER, intact_shards, is_prepared, open_shards, read_manifest, token_dtype
from transformer.data.sources import DocumentsSource, open_source
from transformer.data.tokenizer import TextTokenizer

__all__ = [
    "DataError",
    "TokenData",
    "TokenStream",
    "cache_dir",
    "open_prepared",
    "prepare_corpus",
    "prepare_data",
    "prepared_tokenizer",
    "token_dtype",
    "validation_documents",
]


class TokenStream:
    """Read-only ids: some ranges of a prepared stream, end to end, indexed as one 1-D array.

    Indexing with a slice or an integer array gives a numpy array; `np.asarray(stream)` reads
    it all (for small corpora and tests; training only ever reads windows)."""

    def __init__(self, shards: list[np.memmap[Any, Any]], starts: np.ndarray[Any, Any], stops: np.ndarray[Any, Any]):
        keep = stops > starts
        self._starts, self._stops = starts[keep].astype(np.int64), stops[keep].astype(np.int64)
        self._shards = shards
        self._shard_starts = np.concatenate([[0], np.cumsum([len(s) for s in shards])]).astype(np.int64)
        lengths = self._stops - self._starts
        self._offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self._length = int(self._offsets[-1])
        self.dtype = shards[0].dtype if shards else np.dtype(np.uint16)
        self._view: np.ndarray[Any, Any] | None = None
        if len(self._starts) == 1:  # one range inside one shard: index the mapping directly
            shard = int(np.searchsorted(self._shard_starts, self._starts[0], side="right")) - 1
            if self._stops[0] <= self._shard_starts[shard + 1]:
                base = int(self._shard_starts[shard])
                self._view = shards[shard][int(self._starts[0]) - base : int(self._stops[0]) - base]

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, key: Any) -> np.ndarray[Any, Any]:
        if self._view is not None:
            return np.asarray(self._view[key])
        if isinstance(key, slice):
            return self._gather(np.arange(*key.indices(self._length), dtype=np.int64))
        positions = np.asarray(key, dtype=np.int64)
        if positions.size and (positions.min() < -self._length or positions.max() >= self._length):
            raise IndexError(f"index out of range for a stream of {self._length} tokens")
        return self._gather(np.where(positions < 0, positions + self._length, positions))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray[Any, Any]:
        whole = self[0 : self._length]
        return whole if dtype is None else whole.astype(dtype)

    def astype(self, dtype: Any) -> np.ndarray[Any, Any]:
        return self[0 : self._length].astype(dtype)

    def _gather(self, positions: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        flat = positions.ravel()
        ranges = np.searchsorted(self._offsets, flat, side="right") - 1
        where = self._starts[ranges] + flat - self._offsets[ranges]
        shard_of = np.searchsorted(self._shard_starts, where, side="right") - 1
        out = np.empty(len(flat), dtype=self.dtype)
        for shard in np.unique(shard_of).tolist():
            chosen = shard_of == shard
            out[chosen] = self._shards[shard][where[chosen] - self._shard_starts[shard]]
        return out.reshape(positions.shape)


@dataclass
class TokenData:
    """The tokenised corpus: train and validation streams mapped from disk, and how to sample them."""

    train: TokenStream
    val: TokenStream
    vocab_size: int
    eot_id: int = -1
    directory: Path | None = None  # the prepared folder the streams come from

    def split(self, name: str) -> TokenStream:
        if name == "train":
            return self.train
        if name == "val":
            return self.val
        raise DataError(f"split must be 'train' or 'val', got {name!r}")

    def sample_windows(
        self, split: str, batch_size: int, context: int, generator: torch.Generator
    ) -> Int[Tensor, "batch window"]:
        """`batch_size` random windows of `context + 1` consecutive ids (inputs are [:, :-1],
        targets [:, 1:]); start positions come from `generator`, so a seeded run repeats exactly."""
        tokens = self.split(split)
        if len(tokens) < context + 1:
            raise DataError(
                f"the {split} split has {len(tokens):,} tokens, fewer than context + 1 = {context + 1}: "
                "use a shorter context or a larger corpus"
            )
        starts = torch.randint(0, len(tokens) - context, (batch_size,), generator=generator)
        positions = starts.numpy()[:, None] + np.arange(context + 1)[None, :]
        windows = tokens[positions]
        # Opening a folder does not read its gigabytes, so damage is caught here, per window.
        if windows.size and int(windows.max()) >= self.vocab_size:
            raise DataError(
                f"{self.directory}: token id {int(windows.max())} is outside the vocabulary (size "
                f"{self.vocab_size}): the token files are damaged; delete the folder to rebuild it"
            )
        return torch.from_numpy(windows.astype(np.int64))


def cache_dir() -> Path:
    """Where prepared token files live: $TRANSFORMER_CACHE, else ~/.cache/transformer."""
    return Path(os.environ.get("TRANSFORMER_CACHE", Path.home() / ".cache" / "transformer"))


def prepare_corpus(
    source: str | None,
    tokenizer: TextTokenizer,
    val_fraction: float = 0.1,
    settings: PrepareSettings | None = None,
) -> TokenData:
    """A corpus source's tokens: a prepared folder as it is (`transformer data prepare`), or any
    other source (see `sources.open_source`) prepared into the shared cache, under a key made of
    the tokenizer and the source's identity (paths, sizes, modification times): a run finds its
    cache without reading the corpus again. `transformer data verify` re-reads it when asked."""
    _check_fraction(val_fraction)
    if source is not None and not source.startswith("hf:") and is_prepared(Path(source)):
        return open_prepared(Path(source), tokenizer, val_fraction)
    corpus = open_source(source)
    folder = cache_dir() / "data" / _key(recipe(corpus, tokenizer))
    prepare_tokens(corpus, tokenizer, folder, settings)
    return open_prepared(folder, tokenizer, val_fraction)


def prepared_tokenizer(source: str | None) -> TextTokenizer | None:
    """The tokenizer of a prepared folder (None for any other source): its ids were made with it."""
    if source is None or source.startswith("hf:") or not is_prepared(Path(source)):
        return None
    return TextTokenizer.load(Path(source) / TOKENIZER)


def prepare_data(
    documents: Sequence[str], tokenizer: TextTokenizer, cache_dir: Path, val_fraction: float = 0.1
) -> TokenData:
    """Tokenises `documents` (already in memory) into cache_dir/KEY, or reuses that folder.

    KEY hashes the tokenizer's fingerprint, the documents' text and order, `val_fraction` and
    the format version: change any of them and a new folder is written beside the old one.
    A folder whose files were damaged (a shard missing or of the wrong size) is rebuilt from the
    first damaged shard on; finished files are replaced by rename, never rewritten in place, so
    arrays already mapped from them stay valid.
    """
    _check_fraction(val_fraction)
    if not documents:
        raise DataError("empty corpus: no documents to tokenise")
    corpus = DocumentsSource(list(documents))
    folder = Path(cache_dir) / _key({**recipe(corpus, tokenizer), "val_fraction": repr(val_fraction)})
    prepare_tokens(corpus, tokenizer, folder, PrepareSettings(workers=1))
    return open_prepared(folder, tokenizer, val_fraction)


def open_prepared(folder: Path, tokenizer: TextTokenizer | None, val_fraction: float = 0.1) -> TokenData:
    """A complete prepared folder's train and val streams. Cheap whatever the corpus's size: it
    reads the manifest and the document ends, checks file sizes, and maps the shards."""
    _check_fraction(val_fraction)
    manifest = read_manifest(folder)
    if manifest is None:
        raise DataError(f"{folder} holds no prepared tokens (no {folder / 'manifest.json'})")
    if not manifest["complete"]:
        raise DataError(
            f"{folder} is an unfinished preparation ({len(manifest['shards'])} shards so far): run the same "
            "`transformer data prepare` again to finish it"
        )
    if intact_shards(folder, manifest) < len(manifest["shards"]):
        raise DataError(f"{folder}: a shard is missing or has the wrong size: run `transformer data prepare` again")
    made_with = manifest["tokenizer"]
    if tokenizer is not None and tokenizer.fingerprint() != made_with["fingerprint"]:
        raise DataError(
            f"{folder} was prepared with another tokenizer ({made_with['kind']}, {made_with['vocab_size']:,} ids): "
            f"use its {folder / 'tokenizer.json'}"
        )
    shards, ends = open_shards(folder, manifest)
    n_tokens = int(manifest["tokens"])
    if len(ends) == 1:
        if n_tokens < 2:
            raise DataError("the corpus is one empty document: nothing to split into train and val")
        cut = min(max(1, round(n_tokens * (1.0 - val_fraction))), n_tokens - 1)
        train_ranges = (np.array([0]), np.array([cut]))
        val_ranges = (np.array([cut]), np.array([n_tokens]))
    else:
        first = np.concatenate([[0], ends[:-1]])
        chosen = _validation_indices(len(ends), val_fraction)
        val_ranges = (first[chosen], ends[chosen])
        train_ranges = (np.concatenate([[0], ends[chosen]]), np.concatenate([first[chosen], [n_tokens]]))
    return TokenData(
        train=TokenStream(shards, *train_ranges),
        val=TokenStream(shards, *val_ranges),
        vocab_size=int(made_with["vocab_size"]),
        eot_id=int(made_with["eot_id"]),
        directory=Path(folder),
    )


def validation_documents(n_documents: int, val_fraction: float) -> set[int]:
    """Indices of the validation documents: round(n * fraction) of them (1 to n - 1), evenly spread."""
    return set(_validation_indices(n_documents, val_fraction).tolist())


def _validation_indices(n_documents: int, val_fraction: float) -> np.ndarray[Any, np.dtype[np.int64]]:
    n_val = min(n_documents - 1, max(1, round(n_documents * val_fraction)))
    return (np.arange(1, n_val + 1, dtype=np.int64) * n_documents) // n_val - 1


def _check_fraction(val_fraction: float) -> None:
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")


def _key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]
