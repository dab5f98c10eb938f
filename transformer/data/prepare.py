"""Tokenise a source of any size into a prepared-tokens folder (transformer/data/shards.py).

The text streams through: a reader cuts pieces (transformer/data/sources.py), worker processes
encode batches of them (transformer/data/workers.py), and the ids go straight into shard files.
What is held at once is a few batches of text and their ids, sized from `memory_mb`, whatever
the corpus's size. One process at a time prepares a folder (a lock file inside it); a second
waits and then finds the work done. A preparation that was interrupted (Ctrl-C, a kill, a
crash) resumes after its last finished shard and writes the same files an uninterrupted one
would have; one that failed on the data itself (not UTF-8, an id outside the vocabulary)
removes what it wrote, since it cannot be resumed without changing the source.
"""

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from transformer.data.corpus import DataError
from transformer.data.shards import (
    FORMAT,
    FORMAT_VERSION,
    LOCK,
    MANIFEST,
    TOKENIZER,
    ShardWriter,
    intact_shards,
    read_manifest,
    token_dtype,
    write_json,
)
from transformer.data.sources import Piece, Source
from transformer.data.tokenizer import TextTokenizer
from transformer.data.workers import available_cores, encode_in_order
from transformer.errors import UserError

# Text is encoded in pieces of at most CHUNK characters (a longer one only where a line has no
# safe cut). Then every temporary of one encode call stays near glibc's 128 KiB mmap threshold
# and is reused from the heap. Measured on a 64 MB corpus, one process: 32K pieces grow it by
# 6 MB (char) and 9 MB (BPE); 1 MB pieces by 35 and 52 MB, as the heap fragments; the speed is
# the same. Worker processes get pieces in batches of BATCH characters, so that each round
# trip carries enough work.
CHUNK = 1 << 15
BATCH = 1 << 18
# What the budget must cover besides the memo, per process: the char kind's code-point table
# (4.4 MB), the pieces and ids in flight, HF's encodings of a piece's new segments, small
# allocations. On 30 MB of text whose every word is new (the memo filled and cleared again and
# again), a 32 MB budget grew one process by 26 MB, a 64 MB budget by 44 MB.
FIXED_MB = 16
MEMO_BYTES_PER_ENTRY = 400  # a segment in the dict, its ids, the arrays' doubling slack: measured
MIN_MEMORY_MB = 2 * FIXED_MB
SMALL_CORPUS = 8 << 20


@dataclass(frozen=True)
class PrepareSettings:
    """workers: encoding processes (0: one per available core for BPE, this process for char;
    1: this process alone).
    memory_mb: the most that preparing adds to memory, all its processes together (text and ids
    in flight, the BPE segment memo, tables); each worker process's interpreter (~60 MB) is on
    top. Most of it goes to the memo, which makes BPE faster the more segments it remembers.
    shard_mb: size of one shard file; fixed when a folder is started (a resume keeps it)."""

    workers: int = 0
    memory_mb: int = 512
    shard_mb: float = 256

    def __post_init__(self) -> None:
        if self.workers < 0 or self.memory_mb < MIN_MEMORY_MB or self.shard_mb <= 0:
            raise DataError(
                f"workers must be >= 0, memory_mb >= {MIN_MEMORY_MB} and shard_mb > 0; got {self.workers}, "
                f"{self.memory_mb}, {self.shard_mb}"
            )

    def resolved_workers(self, total_bytes: int | None = None, kind: str = "bpe") -> int:
        """The workers asked for; by default one per core for BPE, and this process alone for the
        char kind (its table lookup runs at ~100 MB/s, faster than pipes to workers carry text)
        or for a corpus so small (under SMALL_CORPUS bytes) that starting processes would take
        longer than encoding it."""
        if self.workers:
            return self.workers
        small = total_bytes is not None and total_bytes < SMALL_CORPUS
        return 1 if small or kind == "char" else available_cores()

    def plan(self, workers: int) -> tuple[int, int, int]:
        """(characters per batch, batches in flight, memo entries per encoding process)."""
        encoders = workers  # with one worker, this process encodes; with more, only they do
        processes = workers + (workers > 1)
        memo_bytes = ((self.memory_mb - FIXED_MB * processes) << 20) // encoders
        memo_entries = max(1 << 10, memo_bytes // MEMO_BYTES_PER_ENTRY)
        if workers == 1:
            return CHUNK, 1, memo_entries
        return BATCH, 2 * workers, memo_entries


def prepare_tokens(
    source: Source,
    tokenizer: TextTokenizer,
    folder: Path,
    settings: PrepareSettings | None = None,
    remove_on_error: bool = True,
) -> dict[str, Any]:
    """Fills `folder` with `source`'s tokens (or resumes, or finds them done); returns the manifest.
    With several workers, a script calling this must start from `if __name__ == "__main__":`
    (transformer/data/workers.py says why)."""
    settings = settings or PrepareSettings()
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{folder} is a file, not a folder for prepared tokens")
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder):
        manifest = _start(source, tokenizer, folder, settings)
        if manifest["complete"]:
            return manifest
        try:
            _run(source, tokenizer, folder, manifest, settings)
        except UserError:
            if remove_on_error:
                _remove_prepared(folder)
            raise
    return manifest


def recipe(source: Source, tokenizer: TextTokenizer) -> dict[str, Any]:
    """What decides the ids: resuming or reusing a folder needs all of it unchanged."""
    return {"format_version": FORMAT_VERSION, "source": source.identity(), "tokenizer": tokenizer.fingerprint()}


def _start(source: Source, tokenizer: TextTokenizer, folder: Path, settings: PrepareSettings) -> dict[str, Any]:
    wanted = recipe(source, tokenizer)
    manifest = read_manifest(folder)
    if manifest is None:
        strangers = [p.name for p in folder.iterdir() if p.name != LOCK]
        if strangers:
            raise DataError(f"{folder} is not empty and holds no prepared tokens (found {strangers[0]}): use another")
        dtype = token_dtype(tokenizer.vocab_size)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "complete": False,
            "source": source.spec,
            "recipe": wanted,
            "tokenizer": {
                "kind": tokenizer.kind,
                "vocab_size": tokenizer.vocab_size,
                "eot_id": tokenizer.eot_id,
                "fingerprint": tokenizer.fingerprint(),
            },
            "dtype": dtype.name,
            "shard_tokens": max(1, int(settings.shard_mb * (1 << 20)) // dtype.itemsize),
            "source_bytes": source.total_bytes(),
            "shards": [],
        }
        tokenizer.save(folder / TOKENIZER)
        write_json(folder / MANIFEST, manifest)
        return manifest
    if manifest["recipe"] != wanted:
        changed = [key for key in wanted if manifest["recipe"].get(key) != wanted[key]]
        raise DataError(
            f"{folder} holds tokens of {manifest['source']} made otherwise ({' and '.join(changed)} differ: "
            "the source changed since, or another tokenizer): delete the folder or use another"
        )
    intact = intact_shards(folder, manifest)
    if intact < len(manifest["shards"]) or not manifest["complete"]:
        del manifest["shards"][intact:]
        manifest["complete"] = False
        for key in ("tokens", "documents"):
            manifest.pop(key, None)
        write_json(folder / MANIFEST, manifest)
    return manifest


def _run(
    source: Source, tokenizer: TextTokenizer, folder: Path, manifest: dict[str, Any], settings: PrepareSettings
) -> None:
    listed = {shard[key] for shard in manifest["shards"] for key in ("file", "ends")}
    for stray in folder.iterdir():  # shards of an interrupted run that the manifest does not list
        if stray.name.startswith(("shard-", ".shard-")) and stray.name not in listed:
            stray.unlink()
    resume: dict[str, Any] = manifest["shards"][-1]["resume"] if manifest["shards"] else {"position": [0, 0], "skip": 0}
    position, skip = (int(resume["position"][0]), int(resume["position"][1])), int(resume["skip"])
    total = source.total_bytes()
    workers = settings.resolved_workers(total, tokenizer.kind)
    batch, in_flight, memo_entries = settings.plan(workers)
    dtype = np.dtype(manifest["dtype"])
    writer = ShardWriter(folder, manifest, tokenizer.eot_id)
    cuts_anywhere = tokenizer.kind == "char"
    batches = batches_of(source.pieces(CHUNK, position, cuts_anywhere), batch)
    progress = tqdm(
        total=total,
        initial=source.bytes_before(position) if total else 0,
        desc="tokenising",
        unit="B",
        unit_scale=True,
        disable=None,
        dynamic_ncols=True,
        file=sys.stderr,
    )
    try:
        for pieces, encoded in encode_in_order(tokenizer, dtype, batches, workers, in_flight, memo_entries):
            for piece, ids in zip(pieces, encoded, strict=True):
                if skip:  # just resumed: the first `skip` ids from `position` are in the last shard
                    length = len(ids) + piece.last
                    if skip >= length:
                        skip -= length
                        continue
                    writer.add(ids[skip:], piece.position, piece.last, already=skip)
                    skip = 0
                else:
                    writer.add(ids, piece.position, piece.last)
            progress.update(sum(piece.size for piece in pieces))
        writer.close()
    finally:
        writer.abandon()
        progress.close()
    if manifest["tokens"] == 0:
        raise DataError(f"empty corpus: {source.empty_message}")


def batches_of(pieces: Iterator[Piece], chunk: int) -> Iterator[tuple[list[Piece], list[str]]]:
    """Pieces grouped to about `chunk` characters a batch: many pieces travel together."""
    batch: list[Piece] = []
    size = 0
    for piece in pieces:
        batch.append(piece)
        size += len(piece.text)
        if size >= chunk:
            yield batch, [p.text for p in batch]
            batch, size = [], 0
    if batch:
        yield batch, [p.text for p in batch]


def _remove_prepared(folder: Path) -> None:
    """Removes the files a preparation writes (nothing else), and the folder if that empties it."""
    for path in folder.iterdir():
        if path.name in (MANIFEST, TOKENIZER, LOCK) or path.name.startswith(("shard-", ".shard-", ".manifest")):
            path.unlink()
    with contextlib.suppress(OSError):
        folder.rmdir()


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Holds DIR/.lock for the duration: two processes never write the same folder."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, one preparation at a time is up to the user
        yield
        return
    with open(folder / LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
