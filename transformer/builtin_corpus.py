"""A corpus that needs no download: the Python reference manual's topic pages.

Every CPython install ships `pydoc_data.topics`, the text `help()` shows for keywords and
topics: about 465,000 characters of real technical English. That makes the default run of
every command work offline, on any machine that has Python.
"""

from pydoc_data.topics import topics


def builtin_documents() -> list[str]:
    """One document per help topic, in a fixed (sorted) order so runs are reproducible."""
    return [topics[name].strip() for name in sorted(topics)]


def builtin_text(separator: str = "\n\n") -> str:
    return separator.join(builtin_documents())
