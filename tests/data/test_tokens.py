"""The data pipeline: documents load as documented, the cached token stream is exactly the
documents' ids with end-of-text after each, windows are slices of it drawn reproducibly, and the
cache is reused only while the tokenizer, corpus and split are unchanged."""

import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from transformer.data.corpus import DataError, builtin_documents, load_documents
from transformer.data.tokenizer import TextTokenizer, train_tokenizer
from transformer.data.tokens import TokenData, prepare_data, token_dtype, validation_documents


@pytest.fixture(scope="module")
def documents() -> list[str]:
    return builtin_documents()[:30]


@pytest.fixture(scope="module")
def tokenizer(documents: list[str]) -> TextTokenizer:
    return train_tokenizer("char", documents)


@pytest.fixture()
def data(documents: list[str], tokenizer: TextTokenizer, tmp_path: Path) -> TokenData:
    return prepare_data(documents, tokenizer, tmp_path / "cache")


def _forbid_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the corpus was tokenised again instead of read from the cache")

    for name in ("encode", "encode_batch", "encode_batch_numpy"):
        monkeypatch.setattr(TextTokenizer, name, fail)


# --- load_documents -------------------------------------------------------------------------------


def test_builtin_is_the_default_corpus() -> None:
    assert load_documents(None) == load_documents("builtin") == builtin_documents()


def test_a_file_is_one_document(tmp_path: Path) -> None:
    text = "First paragraph.\n\nSecond paragraph, é and 🤖.\n"
    (tmp_path / "book.txt").write_text(text, encoding="utf-8")
    assert load_documents(str(tmp_path / "book.txt")) == [text]


def test_a_folder_is_its_text_files_sorted(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("bee")
    (tmp_path / "a.md").write_text("ay")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("sea")
    (tmp_path / "blank.txt").write_text("  \n")  # whitespace only: dropped
    (tmp_path / "image.png").write_bytes(b"\x89PNG")  # not text: ignored
    assert load_documents(str(tmp_path)) == ["ay", "bee", "sea"]


def test_missing_and_empty_corpora_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no such file or folder: .*nowhere"):
        load_documents(str(tmp_path / "nowhere"))
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DataError, match=r"empty corpus: .*empty.txt"):
        load_documents(str(tmp_path / "empty.txt"))
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match=r"empty corpus: .*folder"):
        load_documents(str(tmp_path / "folder"))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.txt is not UTF-8"):
        load_documents(str(tmp_path / "latin1.txt"))


def test_hf_source_without_datasets_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(DataError, match="needs the optional `datasets` package"):
        load_documents("hf:roneneldan/TinyStories")


def test_hf_source_reads_split_and_field(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []

    class Rows:
        column_names = ["story", "id"]

        def __getitem__(self, field: str) -> list[str]:
            return {"story": ["once", "", "upon"], "id": ["1", "2", "3"]}[field]

    def load_dataset(name: str, split: str) -> Rows:
        calls.append((name, split))
        if name == "offline/set":
            raise ConnectionError("Couldn't reach the Hub\nlong traceback text")
        return Rows()

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert load_documents("hf:some/set:validation:story") == ["once", "upon"]
    assert calls == [("some/set", "validation")]
    with pytest.raises(DataError, match="no field 'text'; the dataset has story, id"):
        load_documents("hf:some/set")  # defaults: split train, field text
    assert calls[-1] == ("some/set", "train")
    with pytest.raises(DataError, match=r"offline.*ConnectionError: Couldn't reach the Hub$"):
        load_documents("hf:offline/set")


# --- prepare_data: the token stream ---------------------------------------------------------------


def test_stream_is_documents_with_eot_after_each(
    documents: list[str], tokenizer: TextTokenizer, data: TokenData
) -> None:
    val_indices = validation_documents(len(documents), 0.1)
    assert val_indices == {9, 19, 29}, "every 10th document (spread evenly) validates"
    train_indices = [i for i in range(len(documents)) if i not in val_indices]
    for split, indices in (("train", train_indices), ("val", sorted(val_indices))):
        encoded = tokenizer.encode_batch_numpy([documents[i] for i in indices])
        expected = np.concatenate([np.append(ids, tokenizer.eot_id) for ids in encoded])
        np.testing.assert_array_equal(data.split(split), expected)
    assert data.vocab_size == tokenizer.vocab_size and data.eot_id == tokenizer.eot_id


def test_small_vocabularies_are_stored_as_uint16(data: TokenData) -> None:
    assert data.train.dtype == np.uint16 and data.val.dtype == np.uint16
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


class _BigVocabTokenizer(TextTokenizer):
    """A real char tokenizer that claims 70,000 ids and maps "z" to id 69,999."""

    @property
    def vocab_size(self) -> int:
        return 70_000

    def encode_batch_numpy(self, texts: list[str]) -> list[np.ndarray[Any, np.dtype[np.int64]]]:
        z = super().encode("z")[0]
        return [np.where(ids == z, 69_999, ids) for ids in super().encode_batch_numpy(texts)]


def test_large_vocabularies_are_stored_as_uint32(tmp_path: Path) -> None:
    base = train_tokenizer("char", ["xyz"])
    big = _BigVocabTokenizer(base._hf, "char")
    data = prepare_data(["xz", "zx", "xx"], big, tmp_path)
    assert data.train.dtype == np.uint32
    assert 69_999 in np.concatenate([data.train, data.val]).tolist()


def test_one_document_is_split_inside_its_stream(tokenizer: TextTokenizer, tmp_path: Path) -> None:
    document = builtin_documents()[0]
    data = prepare_data([document], tokenizer, tmp_path, val_fraction=0.25)
    stream = tokenizer.encode(document) + [tokenizer.eot_id]
    assert len(data.train) == round(0.75 * len(stream))
    np.testing.assert_array_equal(np.concatenate([data.train, data.val]), stream)


def test_bad_inputs_raise_data_error(tokenizer: TextTokenizer, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="empty corpus"):
        prepare_data([], tokenizer, tmp_path)
    with pytest.raises(DataError, match="val_fraction"):
        prepare_data(["abc", "def"], tokenizer, tmp_path, val_fraction=1.0)


class _OutOfRangeTokenizer(TextTokenizer):
    def encode_batch_numpy(self, texts: list[str]) -> list[np.ndarray[Any, np.dtype[np.int64]]]:
        return [np.append(ids, self.vocab_size) for ids in super().encode_batch_numpy(texts)]


def test_ids_outside_the_vocabulary_are_rejected_when_writing(tokenizer: TextTokenizer, tmp_path: Path) -> None:
    bad = _OutOfRangeTokenizer(tokenizer._hf, "char")
    with pytest.raises(DataError, match=f"token id {tokenizer.vocab_size} is outside the vocabulary"):
        prepare_data(["abc", "def"], bad, tmp_path)
    assert not any(tmp_path.iterdir()), "a failed preparation leaves no cache behind"


def test_ids_outside_the_vocabulary_are_rejected_when_loading(
    documents: list[str], tokenizer: TextTokenizer, data: TokenData, tmp_path: Path
) -> None:
    """Opening does not read the tokens (that would cost seconds per gigabyte at every start), so
    damage is caught where it would do harm: in the first window that holds it."""
    assert data.directory is not None
    corrupted = np.memmap(data.directory / "shard-000000.bin", dtype=np.uint16, mode="r+")
    corrupted[5] = 65_535  # inside document 0, a training document
    corrupted.flush()
    del corrupted
    again = prepare_data(documents, tokenizer, tmp_path / "cache")
    whole = len(again.train) - 1  # one window: the whole split
    with pytest.raises(DataError, match="token id 65535 is outside the vocabulary.*delete the folder"):
        again.sample_windows("train", 1, whole, torch.Generator().manual_seed(0))


# --- the cache ------------------------------------------------------------------------------------


def test_cache_is_reused_without_tokenising(
    documents: list[str],
    tokenizer: TextTokenizer,
    data: TokenData,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _forbid_encoding(monkeypatch)
    again = prepare_data(documents, tokenizer, tmp_path / "cache")
    assert again.directory == data.directory
    assert data.directory is not None  # for mypy: a prepared corpus always has its cache folder
    np.testing.assert_array_equal(again.train, data.train)
    np.testing.assert_array_equal(again.val, data.val)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [data.directory.name]  # no temp folders left
    manifest = json.loads((data.directory / "manifest.json").read_text())
    assert manifest["complete"] and manifest["tokens"] == len(data.train) + len(data.val)
    assert manifest["documents"] == len(documents)


@pytest.mark.parametrize("change", ["tokenizer", "corpus", "val_fraction"])
def test_cache_is_invalidated_by_any_change(
    documents: list[str], tokenizer: TextTokenizer, data: TokenData, tmp_path: Path, change: str
) -> None:
    other_tokenizer = train_tokenizer("char", documents, vocab_size=300) if change == "tokenizer" else tokenizer
    other_documents = [*documents[:-1], documents[-1] + "!"] if change == "corpus" else documents
    val_fraction = 0.2 if change == "val_fraction" else 0.1
    other = prepare_data(other_documents, other_tokenizer, tmp_path / "cache", val_fraction)
    assert other.directory != data.directory
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_incomplete_cache_is_rebuilt(
    documents: list[str], tokenizer: TextTokenizer, data: TokenData, tmp_path: Path
) -> None:
    assert data.directory is not None
    expected = np.array(data.val)
    (data.directory / "shard-000000.bin").unlink()  # (not truncated in place: `data` still maps the old file)
    (data.directory / "shard-000000.bin").write_bytes(b"\x00\x00")  # sizes now disagree with the manifest
    rebuilt = prepare_data(documents, tokenizer, tmp_path / "cache")
    assert rebuilt.directory == data.directory
    np.testing.assert_array_equal(rebuilt.val, expected)
    np.testing.assert_array_equal(data.val, expected)  # the old mapping was left intact
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [data.directory.name]


# --- windows --------------------------------------------------------------------------------------


def test_windows_are_contiguous_slices_at_generator_drawn_starts(data: TokenData) -> None:
    batch, context = 8, 32
    windows = data.sample_windows("train", batch, context, torch.Generator().manual_seed(3))
    assert windows.shape == (batch, context + 1) and windows.dtype == torch.int64
    starts = torch.randint(0, len(data.train) - context, (batch,), generator=torch.Generator().manual_seed(3))
    for window, start in zip(windows, starts.tolist(), strict=True):
        np.testing.assert_array_equal(window.numpy(), data.train[start : start + context + 1])


def test_windows_repeat_with_the_generator_state_and_differ_across_seeds(data: TokenData) -> None:
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    first = data.sample_windows("val", 4, 16, generator)
    generator.set_state(state)
    assert torch.equal(data.sample_windows("val", 4, 16, generator), first)
    assert not torch.equal(data.sample_windows("val", 4, 16, torch.Generator().manual_seed(1)), first)
    # a window may end on the very last token, never past it
    last = data.sample_windows("val", 1, len(data.val) - 1, torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(last[0].numpy(), data.val)


def test_a_split_shorter_than_the_context_is_a_clear_error(data: TokenData) -> None:
    with pytest.raises(DataError, match=r"the val split has .* tokens, fewer than context \+ 1"):
        data.sample_windows("val", 2, len(data.val), torch.Generator().manual_seed(0))
    with pytest.raises(DataError, match="split must be 'train' or 'val'"):
        data.sample_windows("test", 2, 4, torch.Generator().manual_seed(0))
