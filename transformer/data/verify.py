"""Re-verify a prepared folder against its source, when asked (`transformer data verify DIR`).

Runs and caches identify a source cheaply, by paths, sizes and modification times, and never
re-read it at start. That trusts the file system; this does not. It tokenises the source again,
as preparation did, and compares every id and every document end with the shards.
"""

from pathlib import Path
from typing import Any

import numpy as np

from transformer.data.corpus import DataError
from transformer.data.prepare import CHUNK, PrepareSettings, batches_of
from transformer.data.shards import TOKENIZER, open_shards, read_manifest
from transformer.data.sources import open_source
from transformer.data.tokenizer import TextTokenizer
from transformer.data.workers import encode_in_order


def verify_prepared(folder: Path, settings: PrepareSettings | None = None) -> dict[str, Any]:
    """{"tokens", "documents", "identity_unchanged"} when the shards hold exactly the source's ids;
    a DataError naming the first token or document end that differs otherwise."""
    settings = settings or PrepareSettings()
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None or not manifest["complete"]:
        raise DataError(f"{folder} holds no complete preparation to verify")
    tokenizer = TextTokenizer.load(folder / TOKENIZER)
    if tokenizer.fingerprint() != manifest["tokenizer"]["fingerprint"]:
        raise DataError(f"{folder / TOKENIZER} is not the tokenizer the shards were made with")
    source = open_source(manifest["source"])
    unchanged = source.identity() == manifest["recipe"]["source"]
    shards, ends = open_shards(folder, manifest)
    starts = np.concatenate([[0], np.cumsum([len(s) for s in shards])])
    workers = settings.resolved_workers(source.total_bytes(), tokenizer.kind)
    batch_chars, in_flight, memo_entries = settings.plan(workers)
    eot = np.array([tokenizer.eot_id])
    position, document = 0, 0
    pieces = batches_of(source.pieces(CHUNK, cuts_anywhere=tokenizer.kind == "char"), batch_chars)
    dtype = np.dtype(manifest["dtype"])
    for batch, encoded in encode_in_order(tokenizer, dtype, pieces, workers, in_flight, memo_entries):
        for piece, ids in zip(batch, encoded, strict=True):
            expected = np.concatenate([ids, eot]) if piece.last else ids
            stored = _read(shards, starts, position, len(expected))
            if len(stored) < len(expected) or not np.array_equal(stored, expected):
                different = int(np.argmax(stored != expected[: len(stored)])) if len(stored) else 0
                raise DataError(
                    f"{folder}: token {position + different:,} differs from the source's ids (shard files damaged, "
                    "or the source changed): prepare the folder again"
                )
            position += len(expected)
            if piece.last:
                if document >= len(ends) or int(ends[document]) != position:
                    raise DataError(f"{folder}: the end of document {document:,} is not where the source has it")
                document += 1
    if position != int(manifest["tokens"]) or document != len(ends):
        raise DataError(f"{folder} holds {int(manifest['tokens']) - position:,} tokens more than its source gives")
    return {"tokens": position, "documents": document, "identity_unchanged": unchanged}


def _read(
    shards: list[np.memmap[Any, Any]],
    starts: np.ndarray[Any, Any],
    position: int,
    length: int,
) -> np.ndarray[Any, Any]:
    parts = []
    for shard, start in zip(shards, starts[:-1].tolist(), strict=True):
        low, high = max(position, start), min(position + length, start + len(shard))
        if low < high:
            parts.append(np.asarray(shard[low - start : high - start]))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
