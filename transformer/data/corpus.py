"""Where text comes from: a file, a folder, a Hugging Face dataset, or the built-in corpus.

The built-in corpus needs no download: the Python reference manual's topic pages. Every CPython
install ships `pydoc_data.topics`, the text `help()` shows for keywords and topics: about 465,000
characters of real technical English. That makes the default run of every command work offline,
on any machine that has Python.
"""

from pathlib import Path
from pydoc_data.topics import topics

from transformer.errors import UserError

TEXT_SUFFIXES = (".txt", ".md")


class DataError(UserError):
    """A corpus or token cache that cannot be used; a one-line message that names the path."""


def load_documents(source: str | None) -> list[str]:
    """The documents of a corpus, in a fixed order, empty (whitespace-only) ones dropped.

    source:
    - None or "builtin": the built-in corpus (Python's help topics, one document per topic).
    - a text file: ONE document. A book or a source file is one continuous text; cutting it at
      blank lines would put end-of-text tokens between its paragraphs and teach the model that
      they are unrelated. (With one document, validation is the file's last tokens.)
    - a folder: every *.txt and *.md file under it, recursively, sorted by path, one document each.
    - "hf:NAME[:SPLIT][:FIELD]": a Hugging Face dataset (split "train", field "text" by default),
      one document per row, through the optional `datasets` package.
    Files are read as UTF-8.
    """
    if source is None or source == "builtin":
        return builtin_documents()
    if source.startswith("hf:"):
        return _load_hf(source)
    path = Path(source)
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES)
        documents = [_read_text(f) for f in files]
        what = f"no *.txt or *.md file with text under {path}"
    elif path.is_file():
        documents = [_read_text(path)]
        what = f"{path} is empty"
    else:
        raise DataError(f"no such file or folder: {path}")
    documents = [document for document in documents if document.strip()]
    if not documents:
        raise DataError(f"empty corpus: {what}")
    return documents


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 text (byte {error.start}: {error.reason})") from None
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror}") from None


def _load_hf(source: str) -> list[str]:
    parts = source[len("hf:") :].split(":")
    if not parts[0] or len(parts) > 3:
        raise DataError(f"expected hf:NAME[:SPLIT][:FIELD], got {source!r}")
    parts += [""] * (3 - len(parts))
    name, split, field = parts[0], parts[1] or "train", parts[2] or "text"
    try:
        import datasets  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        raise DataError(
            f"{source} needs the optional `datasets` package: pip install 'transformer[datasets]'"
        ) from None
    try:
        rows = datasets.load_dataset(name, split=split)
    except Exception as error:  # offline, unknown name or split: datasets raises many kinds
        reason = (str(error).strip().splitlines() or [""])[0]
        raise DataError(
            f"{source}: cannot load {name!r} split {split!r} (offline?): {type(error).__name__}: {reason}"
        ) from None
    if field not in rows.column_names:
        raise DataError(f"{source}: no field {field!r}; the dataset has {', '.join(rows.column_names)}")
    documents = [text for text in rows[field] if isinstance(text, str) and text.strip()]
    if not documents:
        raise DataError(f"empty corpus: {source} has no text in field {field!r}")
    return documents


def builtin_documents() -> list[str]:
    """One document per help topic, in a fixed (sorted) order so runs are reproducible."""
    return [topics[name].strip() for name in sorted(topics)]


def builtin_text(separator: str = "\n\n") -> str:
    return separator.join(builtin_documents())
