"""A streamed source yields exactly `load_documents`'s documents, in pieces no longer than asked
(unless no safe cut exists), starts again from any piece's position, and names itself without
reading its text."""

import os
from pathlib import Path

import pytest

from transformer.data.corpus import DataError, builtin_documents, load_documents
from transformer.data.sources import DocumentsSource, Piece, open_source, sample_documents


def _documents(pieces: list[Piece]) -> list[str]:
    documents, current = [], ""
    for piece in pieces:
        current += piece.text
        if piece.last:
            documents.append(current)
            current = ""
    assert current == "", "every document's last piece says so"
    return documents


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_bytes("First line.\r\nSecond, é and 🤖.\rThird\n".encode() * 40)
    (root / "b.md").write_text("   \n\n\t ")  # whitespace only: left out
    (root / "sub" / "c.txt").write_text(" ".join(f"word{i}" for i in range(3000)))  # one long line
    (root / "skip.png").write_bytes(b"\x89PNG")
    return root


@pytest.mark.parametrize("chunk", [12, 100, 1 << 20])
def test_pieces_reassemble_into_load_documents(folder: Path, chunk: int) -> None:
    pieces = list(open_source(str(folder)).pieces(chunk))
    assert _documents(pieces) == load_documents(str(folder))
    assert all(len(piece.text) <= chunk for piece in pieces)  # safe cuts exist within 12 characters here
    assert "\r" not in "".join(piece.text for piece in pieces)  # universal newlines, as read_text


def test_builtin_and_documents_sources_keep_every_document() -> None:
    assert _documents(list(open_source(None).pieces(500))) == builtin_documents()
    assert _documents(list(DocumentsSource(["ab", "", "  "]).pieces(10))) == ["ab", "", "  "]


def test_resuming_at_any_piece_gives_the_rest(folder: Path) -> None:
    source = open_source(str(folder))
    pieces = list(source.pieces(50))
    files = [folder / "a.txt", folder / "b.md", folder / "sub" / "c.txt"]
    for k in (1, len(pieces) // 2, len(pieces) - 1):
        again = list(source.pieces(50, start=pieces[k].position))
        assert [(p.text, p.last) for p in again] == [(p.text, p.last) for p in pieces[k:]]
        index, offset = pieces[k].position
        assert source.bytes_before(pieces[k].position) == sum(f.stat().st_size for f in files[:index]) + offset
    # the progress bar's total: every byte is some piece's, or a left-out blank file's
    assert sum(p.size for p in pieces) + files[1].stat().st_size == source.total_bytes()


def test_a_line_with_no_safe_cut_is_one_longer_piece(tmp_path: Path) -> None:
    (tmp_path / "blob.txt").write_text("x" * 1000 + " tail")
    pieces = list(open_source(str(tmp_path / "blob.txt")).pieces(64))
    assert [len(piece.text) for piece in pieces] == [1000, 5]
    char_pieces = list(open_source(str(tmp_path / "blob.txt")).pieces(64, cuts_anywhere=True))
    assert max(len(piece.text) for piece in char_pieces) == 64  # per-character ids: cut anywhere


def test_errors_name_the_path_and_byte(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no such file or folder: .*nowhere"):
        open_source(str(tmp_path / "nowhere"))
    (tmp_path / "bad.txt").write_bytes(b"fine text " * 10 + b"caf\xe9 au lait")
    with pytest.raises(DataError, match=r"bad.txt is not UTF-8 text \(byte 103: invalid continuation byte\)"):
        list(open_source(str(tmp_path / "bad.txt")).pieces(16))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty corpus: no \*.txt or \*.md file with text under .*empty"):
        open_source(str(tmp_path / "empty"))


def test_identity_is_paths_sizes_and_times_not_content(folder: Path) -> None:
    source = open_source(str(folder))
    first = source.identity()
    assert [entry[0] for entry in first["files"]] == ["a.txt", "b.md", os.path.join("sub", "c.txt")]
    assert open_source(str(folder)).identity() == first
    stat = (folder / "b.md").stat()
    (folder / "b.md").write_text("   \n\n\t !")  # one byte more
    os.utime(folder / "b.md", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert open_source(str(folder)).identity() != first
    same_size = (folder / "a.txt").read_bytes().replace(b"First", b"Frist")
    (folder / "a.txt").write_bytes(same_size)  # same size, new modification time
    os.utime(folder / "a.txt", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert open_source(str(folder)).identity()["files"][0][2] != first["files"][0][2]


def test_a_small_corpus_is_sampled_whole_and_a_large_one_in_bounded_windows(folder: Path) -> None:
    assert sample_documents(str(folder), 1 << 20) == load_documents(str(folder))
    sample = sample_documents(str(folder), 4096)
    assert 1024 < sum(len(text.encode()) for text in sample) <= 4096
    whole = "\n".join(load_documents(str(folder)))
    assert all(text in whole for text in sample)  # real text of the corpus, cut at line boundaries
