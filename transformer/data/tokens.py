"""Documents in, token windows out: a corpus's tokens cached on disk.

Training reads millions of random windows; re-tokenising text each time would dominate the run.
So the corpus is tokenised once into two flat arrays of ids (train and validation), stored as
raw `uint16`/`uint32` files that `np.memmap` maps straight from disk (a corpus larger than memory
still works), and a window is just a slice of that array.

The token stream is every document's ids followed by `<|endoftext|>`:
`doc0 EOT doc1 EOT doc2 EOT ...`. Windows cross document boundaries on purpose (no padding,
no wasted positions); the EOT tells the model that what follows is unrelated, and since EOT is
also a training target the model learns when a text ends.
"""

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor
from tqdm import tqdm

from transformer.data.corpus import DataError, load_documents
from transformer.data.tokenizer import TextTokenizer

FORMAT_VERSION = 1
_ENCODE_BATCH = 256  # documents per `encode_batch` call: parallel, yet a smooth progress bar


@dataclass
class TokenData:
    """The tokenised corpus: two read-only arrays of ids mapped from disk, and how to sample them."""

    train: np.memmap[Any, np.dtype[Any]]
    val: np.memmap[Any, np.dtype[Any]]
    vocab_size: int
    eot_id: int = -1
    directory: Path | None = None  # the cache folder holding train.bin, val.bin and meta.json

    def split(self, name: str) -> np.memmap[Any, np.dtype[Any]]:
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
        return torch.from_numpy(tokens[positions].astype(np.int64))


def cache_dir() -> Path:
    """Where prepared token files live: $TRANSFORMER_CACHE, else ~/.cache/transformer."""
    return Path(os.environ.get("TRANSFORMER_CACHE", Path.home() / ".cache" / "transformer"))


def prepare_corpus(source: str | None, tokenizer: TextTokenizer, val_fraction: float = 0.1) -> TokenData:
    """A corpus source's tokens (see `corpus.load_documents`), in the shared cache."""
    return prepare_data(load_documents(source), tokenizer, cache_dir() / "data", val_fraction)


def prepare_data(
    documents: Sequence[str], tokenizer: TextTokenizer, cache_dir: Path, val_fraction: float = 0.1
) -> TokenData:
    """Tokenises `documents` into cache_dir/KEY/{train.bin,val.bin,meta.json}, or reuses that cache.

    KEY hashes the tokenizer's fingerprint, the documents' text and order, `val_fraction` and
    FORMAT_VERSION: change any of them and a new cache is written beside the old one.
    Validation gets round(n * val_fraction) documents (at least one, and never all), spread
    evenly: with val_fraction=0.1 it is documents 9, 19, 29, ... A single document is split
    instead inside its token stream, at (1 - val_fraction) of its length.
    Files are written to a temporary folder that is renamed into place, so a crash (or another
    process preparing the same data) never leaves a half-written cache.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if not documents:
        raise DataError("empty corpus: no documents to tokenise")
    key = _cache_key(documents, tokenizer, val_fraction)
    folder = Path(cache_dir) / key
    cached = _open_cache(folder, key, tokenizer)
    if cached is not None:
        return cached
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".{key}.", suffix=".tmp"))
    try:
        meta = _write_tokens(documents, tokenizer, val_fraction, staging)
        meta["key"] = key
        (staging / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        _install(staging, folder, key, tokenizer)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    data = _open_cache(folder, key, tokenizer)
    if data is None:
        raise DataError(f"the token cache {folder} could not be read back after writing it")
    return data


def _install(staging: Path, folder: Path, key: str, tokenizer: TextTokenizer) -> None:
    """Renames the finished `staging` folder to `folder`. If `folder` exists, either another process
    just installed the same data (keep theirs) or it is an incomplete cache: it is renamed aside
    first, never overwritten in place, so arrays already mapped from its files stay valid."""
    try:
        os.rename(staging, folder)
        return
    except OSError:
        if not folder.is_dir():
            raise
    if _open_cache(folder, key, tokenizer) is not None:
        return  # another process has just installed the same data
    stale = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{key}.", suffix=".stale"))
    os.rename(folder, stale / "old")
    os.rename(staging, folder)
    shutil.rmtree(stale, ignore_errors=True)


def _write_tokens(
    documents: Sequence[str], tokenizer: TextTokenizer, val_fraction: float, folder: Path
) -> dict[str, Any]:
    dtype = token_dtype(tokenizer.vocab_size)
    n_documents = len(documents)
    counts = {"train": 0, "val": 0}
    if n_documents == 1:
        ids = np.append(tokenizer.encode_batch_numpy([documents[0]])[0], tokenizer.eot_id)
        _check_ids(ids, tokenizer)
        if len(ids) < 2:
            raise DataError("the corpus is one empty document: nothing to split into train and val")
        cut = min(max(1, round(len(ids) * (1.0 - val_fraction))), len(ids) - 1)
        for name, part in (("train", ids[:cut]), ("val", ids[cut:])):
            part.astype(dtype).tofile(folder / f"{name}.bin")
            counts[name] = len(part)
        val_indices: set[int] = set()
    else:
        val_indices = validation_documents(n_documents, val_fraction)
        with open(folder / "train.bin", "wb") as train_file, open(folder / "val.bin", "wb") as val_file:
            for index, ids in _encoded(documents, tokenizer):
                name, file = ("val", val_file) if index in val_indices else ("train", train_file)
                _check_ids(ids, tokenizer).astype(dtype).tofile(file)
                counts[name] += len(ids)
    return {
        "format_version": FORMAT_VERSION,
        "dtype": dtype.name,
        "vocab_size": tokenizer.vocab_size,
        "eot_id": tokenizer.eot_id,
        "tokenizer_kind": tokenizer.kind,
        "tokenizer_fingerprint": tokenizer.fingerprint(),
        "val_fraction": val_fraction,
        "documents": n_documents,
        "val_documents": len(val_indices),
        "train_tokens": counts["train"],
        "val_tokens": counts["val"],
    }


def _encoded(documents: Sequence[str], tokenizer: TextTokenizer) -> Iterator[tuple[int, np.ndarray[Any, Any]]]:
    """(index, ids + [EOT]) for every document, encoded in parallel batches under a progress bar."""
    with tqdm(total=len(documents), desc="tokenising", unit="doc", disable=None) as progress:
        for first in range(0, len(documents), _ENCODE_BATCH):
            batch = list(documents[first : first + _ENCODE_BATCH])
            for offset, ids in enumerate(tokenizer.encode_batch_numpy(batch)):
                yield first + offset, np.append(ids, tokenizer.eot_id)
            progress.update(len(batch))


def validation_documents(n_documents: int, val_fraction: float) -> set[int]:
    """Indices of the validation documents: round(n * fraction) of them (1 to n - 1), evenly spread."""
    n_val = min(n_documents - 1, max(1, round(n_documents * val_fraction)))
    return {(i + 1) * n_documents // n_val - 1 for i in range(n_val)}


def token_dtype(vocab_size: int) -> np.dtype[Any]:
    """uint16 holds ids 0..65535 at half the disk and memory of uint32."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def _check_ids(ids: np.ndarray[Any, Any], tokenizer: TextTokenizer) -> np.ndarray[Any, Any]:
    if len(ids) and (ids.min() < 0 or ids.max() >= tokenizer.vocab_size):
        bad = int(ids.max()) if ids.max() >= tokenizer.vocab_size else int(ids.min())
        raise DataError(f"token id {bad} is outside the vocabulary (size {tokenizer.vocab_size})")
    return ids


def _cache_key(documents: Sequence[str], tokenizer: TextTokenizer, val_fraction: float) -> str:
    corpus = hashlib.sha256()
    for document in documents:
        data = document.encode("utf-8", errors="surrogatepass")
        corpus.update(len(data).to_bytes(8, "little"))  # boundaries count: ["ab"] != ["a", "b"]
        corpus.update(data)
    recipe = json.dumps(
        {
            "format_version": FORMAT_VERSION,
            "tokenizer": tokenizer.fingerprint(),
            "documents": corpus.hexdigest(),
            "val_fraction": repr(val_fraction),
        },
        sort_keys=True,
    )
    return hashlib.sha256(recipe.encode()).hexdigest()[:20]


def _open_cache(folder: Path, key: str, tokenizer: TextTokenizer) -> TokenData | None:
    """The cached data, None if there is no complete cache (it is then rebuilt), DataError if its
    ids do not fit the tokenizer (a cache edited or written by something else)."""
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        dtype = np.dtype(meta["dtype"])
        sizes = {name: int(meta[f"{name}_tokens"]) for name in ("train", "val")}
        complete = (
            meta["key"] == key
            and meta["format_version"] == FORMAT_VERSION
            and all((folder / f"{name}.bin").stat().st_size == n * dtype.itemsize for name, n in sizes.items())
            and all(n > 0 for n in sizes.values())
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not complete:
        return None
    if meta["vocab_size"] != tokenizer.vocab_size:
        raise DataError(f"{folder}: cache made for vocab size {meta['vocab_size']}, not {tokenizer.vocab_size}")
    arrays = {name: np.memmap(folder / f"{name}.bin", dtype=dtype, mode="r") for name in sizes}
    for name, tokens in arrays.items():
        if int(tokens.max()) >= tokenizer.vocab_size:
            raise DataError(
                f"{folder / (name + '.bin')}: token id {int(tokens.max())} is outside the vocabulary "
                f"(size {tokenizer.vocab_size}); delete the folder to rebuild it"
            )
    return TokenData(
        train=arrays["train"],
        val=arrays["val"],
        vocab_size=tokenizer.vocab_size,
        eot_id=tokenizer.eot_id,
        directory=folder,
    )
