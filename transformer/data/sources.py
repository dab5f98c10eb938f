"""A corpus as a stream of pieces of text, in bounded memory, with a cheap identity.

`corpus.load_documents` holds a whole corpus as Python strings, which a gigabyte-sized corpus
cannot afford. A `Source` yields the same documents as pieces of at most about `chunk` characters
each, cut at `bulk.safe_cut` so that cutting cannot change the ids, and says where each piece
starts, as (document index, offset: bytes in a file, characters in a string). Preparation records
such a position at the end of every shard, and starts there again after a crash.

The documents are exactly `load_documents`'s: files read as UTF-8 with universal newlines (as
`Path.read_text` does), a folder's *.txt and *.md files sorted by path, whitespace-only documents
dropped. `identity()` names a source without reading it (paths, sizes, modification times), so a
run finds its token cache without re-reading or re-hashing the corpus.
"""

import codecs
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformer.data.bulk import safe_cut
from transformer.data.corpus import TEXT_SUFFIXES, DataError, builtin_documents, load_documents

Position = tuple[int, int]  # (document index, offset into the document)
DEFAULT_SAMPLE_MB = 64
_SAMPLE_WINDOWS = 64


@dataclass(frozen=True)
class Piece:
    """Text to encode; the document's end-of-text follows it when `last` is true."""

    text: str
    position: Position  # where `text` starts in the source
    last: bool
    size: int  # bytes of the source it covers, for the progress bar


class Source:
    """Documents as pieces. Subclasses say how to read a document from an offset."""

    spec: str = ""
    drop_blank = True  # whitespace-only documents are left out, as load_documents does
    empty_message = "no documents"

    def identity(self) -> dict[str, Any]:
        raise NotImplementedError

    def total_bytes(self) -> int | None:
        return None

    def bytes_before(self, position: Position) -> int:
        return 0

    def _documents(self, first: int) -> Iterator[tuple[int, Any]]:
        """(index, handle) of every document from `first` on."""
        raise NotImplementedError

    def _read(self, handle: Any, offset: int, chunk: int, cuts_anywhere: bool) -> Iterator[tuple[int, str, int]]:
        """(offset, text, size) of one document's pieces from `offset` on."""
        raise NotImplementedError

    def pieces(self, chunk: int, start: Position = (0, 0), cuts_anywhere: bool = False) -> Iterator[Piece]:
        """Every piece from `start` on. A document that turns out to be whitespace only is left
        out; its leading whitespace pieces wait until a piece with text joins them."""
        for index, handle in self._documents(start[0]):
            offset = start[1] if index == start[0] else 0
            # Preparation resumes only at a piece it has written, so a document resumed inside
            # has text: nothing waits.
            waiting: list[tuple[int, str, int]] = []
            has_text = offset > 0 or not self.drop_blank
            previous: Piece | None = None
            for piece_offset, text, size in self._read(handle, offset, chunk, cuts_anywhere):
                if not has_text:
                    waiting.append((piece_offset, text, size))
                    if text.isspace() or not text:
                        continue
                    has_text = True
                    piece_offset = waiting[0][0]
                    text, size = "".join(t for _, t, _ in waiting), sum(s for _, _, s in waiting)
                    waiting = []
                if previous is not None:
                    yield previous
                previous = Piece(text, (index, piece_offset), False, size)
            if previous is not None:
                yield Piece(previous.text, previous.position, True, previous.size)
            elif not self.drop_blank:  # an empty document kept: its end-of-text alone
                yield Piece("", (index, 0), True, 0)


def open_source(spec: str | None) -> Source:
    """The source `spec` names: None/"builtin", a file, a folder, or "hf:NAME[:SPLIT][:FIELD]"."""
    if spec is None or spec == "builtin":
        return DocumentsSource(builtin_documents(), "builtin")
    if spec.startswith("hf:"):
        return HfSource(spec)
    path = Path(spec)
    if path.is_dir() or path.is_file():
        return FilesSource(path)
    raise DataError(f"no such file or folder: {path}")


class DocumentsSource(Source):
    """Documents already in memory (the built-in corpus, or a list given to `prepare_data`)."""

    drop_blank = False

    def __init__(self, documents: list[str], spec: str = "documents") -> None:
        if not documents:
            raise DataError("empty corpus: no documents to tokenise")
        self.documents = documents
        self.spec = spec
        self._sizes = [len(document.encode("utf-8", errors="surrogatepass")) for document in documents]

    def identity(self) -> dict[str, Any]:
        digest = hashlib.sha256()
        for document in self.documents:
            data = document.encode("utf-8", errors="surrogatepass")
            digest.update(len(data).to_bytes(8, "little"))  # boundaries count: ["ab"] != ["a", "b"]
            digest.update(data)
        return {"kind": self.spec, "sha256": digest.hexdigest()}

    def total_bytes(self) -> int | None:
        return sum(self._sizes)

    def bytes_before(self, position: Position) -> int:
        return sum(self._sizes[: position[0]]) + position[1]

    def _documents(self, first: int) -> Iterator[tuple[int, Any]]:
        for index in range(first, len(self.documents)):
            yield index, self.documents[index]

    def _read(self, handle: Any, offset: int, chunk: int, cuts_anywhere: bool) -> Iterator[tuple[int, str, int]]:
        yield from _string_pieces(handle, offset, chunk, cuts_anywhere)


class FilesSource(Source):
    """One text file (one document), or a folder's *.txt and *.md files (one document each)."""

    def __init__(self, path: Path) -> None:
        self.root = path.resolve()
        self.spec = str(self.root)
        if self.root.is_dir():
            self.files = sorted(f for f in self.root.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES)
            self.empty_message = f"no *.txt or *.md file with text under {path}"
            if not self.files:
                raise DataError(f"empty corpus: {self.empty_message}")
        else:
            self.files = [self.root]
            self.empty_message = f"{path} is empty"
        self._stats = [_stat(f) for f in self.files]

    def identity(self) -> dict[str, Any]:
        base = self.root if self.root.is_dir() else self.root.parent
        files = [
            [str(f.relative_to(base)), stat.st_size, stat.st_mtime_ns]
            for f, stat in zip(self.files, self._stats, strict=True)
        ]
        return {"kind": "files", "path": str(self.root), "files": files}

    def total_bytes(self) -> int | None:
        return sum(stat.st_size for stat in self._stats)

    def bytes_before(self, position: Position) -> int:
        return sum(stat.st_size for stat in self._stats[: position[0]]) + position[1]

    def _documents(self, first: int) -> Iterator[tuple[int, Any]]:
        for index in range(first, len(self.files)):
            yield index, self.files[index]

    def _read(self, handle: Any, offset: int, chunk: int, cuts_anywhere: bool) -> Iterator[tuple[int, str, int]]:
        yield from _file_pieces(handle, offset, chunk, cuts_anywhere)


class HfSource(Source):
    """A Hugging Face dataset in streaming mode: rows arrive one by one, never all at once."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.name, self.split, self.field = _parse_hf(spec)
        self.empty_message = f"{spec} has no text in field {self.field!r}"

    def identity(self) -> dict[str, Any]:
        found: dict[str, Any] = {"kind": "hf", "name": self.name, "split": self.split, "field": self.field}
        local = Path(self.name)
        if local.exists():  # a dataset on disk: its files say when it changed
            files = [local] if local.is_file() else sorted(f for f in local.rglob("*") if f.is_file())
            found["files"] = [[str(f), _stat(f).st_size, _stat(f).st_mtime_ns] for f in files]
        return found

    def _documents(self, first: int) -> Iterator[tuple[int, Any]]:
        rows = _hf_rows(self.spec, self.name, self.split, self.field)
        skipped = 0
        if first and hasattr(rows, "skip"):
            rows, skipped = rows.skip(first), first  # read past, not decoded into documents
        for index, row in enumerate(rows, start=skipped):
            if index < first:
                continue
            if self.field not in row:
                raise DataError(f"{self.spec}: no field {self.field!r}; the dataset has {', '.join(row)}")
            text = row[self.field]
            if isinstance(text, str):
                yield index, text

    def _read(self, handle: Any, offset: int, chunk: int, cuts_anywhere: bool) -> Iterator[tuple[int, str, int]]:
        yield from _string_pieces(handle, offset, chunk, cuts_anywhere)


def _string_pieces(text: str, offset: int, chunk: int, cuts_anywhere: bool) -> Iterator[tuple[int, str, int]]:
    while offset < len(text):
        rest = len(text) - offset
        if rest <= chunk:
            cut = rest
        else:
            window = text[offset : offset + 2 * chunk]
            cut = safe_cut(window, chunk) or _fallback_cut(text, offset, chunk, cuts_anywhere)
        piece = text[offset : offset + cut]
        yield offset, piece, len(piece.encode("utf-8", errors="surrogatepass"))
        offset += cut


def _fallback_cut(text: str, offset: int, chunk: int, cuts_anywhere: bool) -> int:
    """No safe cut within `chunk` characters: anywhere will do for per-character ids; otherwise
    the next safe cut further on (or the document's end)."""
    if cuts_anywhere:
        return chunk
    limit = chunk
    while offset + limit < len(text):
        limit *= 2
        cut = safe_cut(text[offset : offset + limit + 1], limit)
        if cut:
            return cut
    return len(text) - offset


def _file_pieces(path: Path, offset: int, chunk: int, cuts_anywhere: bool) -> Iterator[tuple[int, str, int]]:
    """A file's pieces from byte `offset` (a piece boundary) on, decoded and newline-translated."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    buffer, limit, done = "", chunk, False
    read_to = offset
    try:
        with open(path, "rb") as file:
            file.seek(offset)
            while True:
                while not done and len(buffer) <= limit:
                    block = file.read(max(chunk, 1 << 16))
                    pending = len(decoder.getstate()[0])
                    try:
                        buffer += decoder.decode(block, final=not block)
                    except UnicodeDecodeError as error:
                        byte = read_to - pending + error.start
                        raise DataError(f"{path} is not UTF-8 text (byte {byte}: {error.reason})") from None
                    read_to += len(block)
                    done = not block
                if not buffer:
                    return
                if done and len(buffer) <= chunk:
                    cut = len(buffer)
                else:
                    cut = safe_cut(buffer, limit)
                    if not cut and cuts_anywhere:
                        cut = limit - (buffer[limit - 1] == "\r")  # never between "\r" and "\n"
                    if not cut and done and limit >= len(buffer):
                        cut = len(buffer)  # no safe cut before the end of the file
                    if not cut:
                        limit *= 2  # no safe cut yet: read on
                        continue
                raw, buffer, limit = buffer[:cut], buffer[cut:], chunk
                size = len(raw.encode("utf-8"))
                text = raw.replace("\r\n", "\n").replace("\r", "\n") if "\r" in raw else raw
                yield offset, text, size
                offset += size
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror}") from None


def _stat(path: Path) -> os.stat_result:
    try:
        return path.stat()
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror}") from None


def _parse_hf(spec: str) -> tuple[str, str, str]:
    parts = spec[len("hf:") :].split(":")
    if not parts[0] or len(parts) > 3:
        raise DataError(f"expected hf:NAME[:SPLIT][:FIELD], got {spec!r}")
    parts += [""] * (3 - len(parts))
    return parts[0], parts[1] or "train", parts[2] or "text"


def _hf_rows(spec: str, name: str, split: str, field: str) -> Any:
    try:
        import datasets  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        raise DataError(f"{spec} needs the optional `datasets` package: pip install 'transformer[datasets]'") from None
    try:
        rows = datasets.load_dataset(name, split=split, streaming=True)
    except Exception as error:  # offline, unknown name or split: datasets raises many kinds
        reason = (str(error).strip().splitlines() or [""])[0]
        raise DataError(
            f"{spec}: cannot load {name!r} split {split!r} (offline?): {type(error).__name__}: {reason}"
        ) from None
    columns = getattr(rows, "column_names", None)
    if columns is not None and field not in columns:
        raise DataError(f"{spec}: no field {field!r}; the dataset has {', '.join(columns)}")
    return rows


def sample_documents(spec: str | None, max_bytes: int = DEFAULT_SAMPLE_MB << 20) -> list[str]:
    """What a tokenizer learns from: the whole corpus (as `load_documents`) when it is at most
    `max_bytes`, else `max_bytes` of it in 64 windows spread evenly over its files (each cut at
    line breaks), or a Hugging Face dataset's first rows up to `max_bytes`."""
    source = open_source(spec)
    total = source.total_bytes()
    if isinstance(source, DocumentsSource) or (total is not None and total <= max_bytes):
        return load_documents(spec)
    if isinstance(source, HfSource):
        documents, taken = [], 0
        for piece in source.pieces(chunk=max_bytes):
            documents.append(piece.text)
            taken += piece.size
            if taken >= max_bytes:
                break
        return documents if documents else load_documents(spec)
    assert isinstance(source, FilesSource) and total is not None
    return _spread_windows(source, total, max_bytes)


def _spread_windows(source: FilesSource, total: int, max_bytes: int) -> list[str]:
    width = max(1, max_bytes // _SAMPLE_WINDOWS)
    starts = [total * i // _SAMPLE_WINDOWS for i in range(_SAMPLE_WINDOWS)]
    documents = []
    sizes = [stat.st_size for stat in source._stats]
    for start in starts:
        index, offset = 0, start
        while offset >= sizes[index]:
            offset -= sizes[index]
            index += 1
        with open(source.files[index], "rb") as file:
            file.seek(offset)
            data = file.read(width)
        if offset:  # begin at a space or line break, where a character (and a word) begins
            breaks = [i for i in (data.find(b" "), data.find(b"\n")) if i >= 0]
            data = data[min(breaks) :] if breaks else b""
        text = data.decode("utf-8", errors="ignore").replace("\r\n", "\n").replace("\r", "\n")
        if offset + width < sizes[index]:
            cut = safe_cut(text, len(text))
            text = text[:cut] if cut else ""
        if text.strip():
            documents.append(text)
    if not documents:
        raise DataError(f"empty corpus: {source.empty_message}")
    return documents
