"""The prepared-tokens folder: shard files of raw ids and the manifest that says which are done.

    DIR/manifest.json          what is in DIR: source, tokenizer, shards, and whether it is complete
    DIR/tokenizer.json         the tokenizer the ids were made with
    DIR/shard-000000.bin ...   the token stream, cut into shards of `shard_tokens` ids (uint16/uint32)
    DIR/shard-000000.ends ...  int64: where each document ending in that shard ends (just past its EOT)

The stream is the documents' ids, each followed by `<|endoftext|>`, and does not depend on how
the text was chunked on its way in, nor on the validation split: a run chooses val_fraction
when it opens the folder, using the document ends.

Crash safety: a shard is written under a temporary name and renamed into place when full; the
manifest (also replaced by rename) lists only renamed shards, and each entry records where in
the source its last token came from. A run reads only a complete manifest's shards, so it never
sees half a shard; a preparation that was killed starts again after the last listed one.
"""

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from transformer.data.corpus import DataError
from transformer.data.sources import Position

FORMAT = "transformer-tokens"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
LOCK = ".lock"


def token_dtype(vocab_size: int) -> np.dtype[Any]:
    """uint16 holds ids 0..65535 at half the disk and memory of uint32."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.bin"


def ends_name(index: int) -> str:
    return f"shard-{index:06d}.ends"


def is_prepared(folder: Path) -> bool:
    return (folder / MANIFEST).is_file()


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest, or None when there is none (or it is not one of ours)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{folder} holds tokens in format {manifest.get('format_version')}, this version reads "
            f"{FORMAT_VERSION}: prepare it again"
        )
    return manifest


def write_json(path: Path, value: Any) -> None:
    """Replaces `path` atomically: readers see the old file or the new one, never a torn one."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", encoding="utf-8") as file:
        file.write(json.dumps(value, indent=1) + "\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def intact_shards(folder: Path, manifest: dict[str, Any]) -> int:
    """How many of the listed shards, from the first, are on disk at their recorded sizes."""
    itemsize = np.dtype(manifest["dtype"]).itemsize
    for count, shard in enumerate(manifest["shards"]):
        try:
            sizes = (folder / shard["file"]).stat().st_size, (folder / shard["ends"]).stat().st_size
        except OSError:
            return count
        if sizes != (shard["tokens"] * itemsize, shard["documents"] * 8):
            return count
    return len(manifest["shards"])


def open_shards(folder: Path, manifest: dict[str, Any]) -> tuple[list[np.memmap[Any, Any]], np.ndarray[Any, Any]]:
    """Each shard mapped read-only, and the end of every document in the whole stream."""
    dtype = np.dtype(manifest["dtype"])
    arrays = [np.memmap(folder / shard["file"], dtype=dtype, mode="r") for shard in manifest["shards"]]
    ends = [np.fromfile(folder / shard["ends"], dtype=np.int64) for shard in manifest["shards"]]
    return arrays, np.concatenate(ends) if ends else np.zeros(0, np.int64)


class ShardWriter:
    """Appends a piece's ids to the stream, finishing a shard (and the manifest) whenever one fills."""

    def __init__(self, folder: Path, manifest: dict[str, Any], eot_id: int) -> None:
        self.folder = folder
        self.manifest = manifest
        self.dtype = np.dtype(manifest["dtype"])
        self.shard_tokens = int(manifest["shard_tokens"])
        self.eot = np.array([eot_id], dtype=self.dtype)
        self.total = sum(shard["tokens"] for shard in manifest["shards"])
        self.documents = sum(shard["documents"] for shard in manifest["shards"])
        self._file: Any = None

    def add(self, ids: np.ndarray[Any, Any], position: Position, last: bool, already: int = 0) -> None:
        """The ids of the piece at `position` (its first `already` ids are written: skip them)
        and, when `last`, its document's end-of-text."""
        done = already
        for part, is_eot in ((ids, False), (self.eot if last else self.eot[:0], True)):
            start = 0
            while start < len(part):
                if self._file is None:
                    self._open()
                take = part[start : start + self.shard_tokens - self._count]
                self._file.write(take.tobytes())
                self._count += len(take)
                start += len(take)
                done += len(take)
                if is_eot:
                    self._ends.append(self.total + self._count)
                if self._count == self.shard_tokens:
                    self._finish({"position": list(position), "skip": done})

    def close(self) -> None:
        """Finishes the last, partly filled shard and marks the preparation complete."""
        if self._file is not None and self._count:
            self._finish(None)
        elif self._file is not None:
            self._file.close()
            (self.folder / self._temporary).unlink()
        self.manifest["complete"] = True
        self.manifest["tokens"], self.manifest["documents"] = self.total, self.documents
        write_json(self.folder / MANIFEST, self.manifest)

    def abandon(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _open(self) -> None:
        index = len(self.manifest["shards"])
        self._temporary = f".{shard_name(index)}.tmp"
        self._file = open(self.folder / self._temporary, "wb")
        self._count = 0
        self._ends: list[int] = []

    def _finish(self, resume: dict[str, Any] | None) -> None:
        index = len(self.manifest["shards"])
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        ends = self.folder / f".{ends_name(index)}.tmp"
        np.asarray(self._ends, dtype=np.int64).tofile(ends)
        os.replace(ends, self.folder / ends_name(index))
        os.replace(self.folder / self._temporary, self.folder / shard_name(index))
        self.total += self._count
        self.documents += len(self._ends)
        entry = {"file": shard_name(index), "ends": ends_name(index), "tokens": self._count}
        entry |= {"documents": len(self._ends), "resume": resume}
        self.manifest["shards"].append(entry)
        write_json(self.folder / MANIFEST, self.manifest)
