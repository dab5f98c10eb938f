"""Streaming preparation: a prepared folder holds exactly what the in-memory preparation held
(same train and val streams, so the same windows for the same seed, bit for bit), an interrupted
preparation resumes to the very same files, and memory stays within the budget however large the
corpus.

The reference is the in-memory preparation as it was before streaming, written out here in its
few lines: every document encoded whole by HF, followed by end-of-text; validation every 10th
document (spread evenly), or the tail of a lone document.
"""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from transformer.data.corpus import DataError, builtin_documents, load_documents
from transformer.data.prepare import PrepareSettings, prepare_tokens
from transformer.data.shards import ShardWriter
from transformer.data.sources import open_source
from transformer.data.tokenizer import TextTokenizer, train_tokenizer
from transformer.data.tokens import open_prepared, prepare_corpus
from transformer.data.verify import verify_prepared

Ids = np.ndarray[Any, np.dtype[Any]]
TINY_SHARDS = 0.004  # MB: about 2,000 ids a shard, so windows cross shard boundaries


def _reference(documents: list[str], tokenizer: TextTokenizer, val_fraction: float) -> dict[str, Ids]:
    streams = [np.append(tokenizer.encode(document), tokenizer.eot_id) for document in documents]
    if len(streams) == 1:
        ids = streams[0]
        cut = min(max(1, round(len(ids) * (1.0 - val_fraction))), len(ids) - 1)
        return {"train": ids[:cut], "val": ids[cut:]}
    n = len(streams)
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    val = {(i + 1) * n // n_val - 1 for i in range(n_val)}
    return {
        "train": np.concatenate([s for i, s in enumerate(streams) if i not in val]),
        "val": np.concatenate([s for i, s in enumerate(streams) if i in val]),
    }


def _reference_windows(tokens: Ids, batch: int, context: int, generator: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(tokens) - context, (batch,), generator=generator)
    return torch.from_numpy(tokens[starts.numpy()[:, None] + np.arange(context + 1)].astype(np.int64))


def _folder_corpus(root: Path, n: int = 25) -> Path:
    root.mkdir(parents=True)
    for index, text in enumerate(builtin_documents()[:n]):
        data = text.replace("\n", "\r\n") if index % 3 == 0 else text  # some Windows line ends
        (root / f"doc{index:02d}.txt").write_bytes(data.encode())
    (root / "doc99-blank.md").write_text(" \n\n ")
    return root


def _file_corpus(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "book.txt").write_text("\n\n".join(builtin_documents()[:20]) + "\n")
    return root / "book.txt"


@pytest.fixture(scope="module", params=["char", "bpe"])
def tokenizer(request: pytest.FixtureRequest) -> TextTokenizer:
    text = "\n\n".join(builtin_documents()[:30])
    return train_tokenizer(request.param, [text], None if request.param == "char" else 600)


@pytest.mark.parametrize("shape", ["folder", "one file"])
def test_a_prepared_folder_gives_the_in_memory_streams_and_windows_bit_for_bit(
    tokenizer: TextTokenizer, tmp_path: Path, shape: str
) -> None:
    corpus = _folder_corpus(tmp_path / "corpus") if shape == "folder" else _file_corpus(tmp_path / "corpus")
    out = tmp_path / "prepared"
    manifest = prepare_tokens(
        open_source(str(corpus)), tokenizer, out, PrepareSettings(workers=1, shard_mb=TINY_SHARDS)
    )
    assert len(manifest["shards"]) > 5
    reference = _reference(load_documents(str(corpus)), tokenizer, 0.1)
    data = prepare_corpus(str(out), tokenizer, 0.1)  # train.data=DIR
    assert data.directory == out
    for split in ("train", "val"):
        np.testing.assert_array_equal(np.asarray(data.split(split)), reference[split])
        ours, theirs = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
        for _ in range(5):
            expected = _reference_windows(reference[split], 16, 64, theirs)
            assert torch.equal(data.sample_windows(split, 16, 64, ours), expected)


def test_encoding_in_two_worker_processes_writes_the_same_files(tmp_path: Path) -> None:
    tokenizer = train_tokenizer("bpe", ["\n\n".join(builtin_documents()[:30])], 600)
    corpus = _folder_corpus(tmp_path / "corpus")
    one, two = tmp_path / "one", tmp_path / "two"
    prepare_tokens(open_source(str(corpus)), tokenizer, one, PrepareSettings(workers=1, shard_mb=TINY_SHARDS))
    prepare_tokens(open_source(str(corpus)), tokenizer, two, PrepareSettings(workers=2, shard_mb=TINY_SHARDS))
    assert _contents(one) == _contents(two)


def _contents(folder: Path, names: tuple[str, ...] = ("",)) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != ".lock" and p.name.startswith(names)}


def test_a_preparation_killed_mid_shard_resumes_to_the_same_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Shards and the manifest are written alike for every tokenizer kind: one kind will do.
    tokenizer = train_tokenizer("char", ["\n\n".join(builtin_documents()[:30])])
    corpus = _folder_corpus(tmp_path / "corpus")
    settings = PrepareSettings(workers=1, shard_mb=TINY_SHARDS)
    whole = tmp_path / "whole"
    prepare_tokens(open_source(str(corpus)), tokenizer, whole, settings)

    def dies_in_the_middle_of_a_piece(writer: ShardWriter, ids: Any, *args: Any, **kwargs: Any) -> None:
        if writer.total > 20_000:  # a few shards are done
            original(writer, ids[: len(ids) // 2], *args, **kwargs)  # half a piece, into a shard
            raise KeyboardInterrupt
        original(writer, ids, *args, **kwargs)

    killed = tmp_path / "killed"
    original = ShardWriter.add
    monkeypatch.setattr(ShardWriter, "add", dies_in_the_middle_of_a_piece)
    with pytest.raises(KeyboardInterrupt):
        prepare_tokens(open_source(str(corpus)), tokenizer, killed, settings)
    monkeypatch.undo()
    assert [p.name for p in killed.glob(".shard-*.tmp")], "the interrupted shard was left half-written"
    with pytest.raises(DataError, match="unfinished preparation"):
        open_prepared(killed, tokenizer)  # a run reads none of it
    prepare_tokens(open_source(str(corpus)), tokenizer, killed, settings)
    assert _contents(killed) == _contents(whole)

    # Resumed with text cut into other pieces, the token files are still the same: cuts are safe.
    monkeypatch.setattr(ShardWriter, "add", dies_in_the_middle_of_a_piece)
    again = tmp_path / "again"
    with pytest.raises(KeyboardInterrupt):
        prepare_tokens(open_source(str(corpus)), tokenizer, again, settings)
    monkeypatch.undo()
    monkeypatch.setattr("transformer.data.prepare.CHUNK", 300)
    prepare_tokens(open_source(str(corpus)), tokenizer, again, settings)
    assert _contents(again, ("shard-",)) == _contents(whole, ("shard-",))


def test_a_changed_source_or_tokenizer_is_not_resumed_or_reused(tokenizer: TextTokenizer, tmp_path: Path) -> None:
    corpus = _folder_corpus(tmp_path / "corpus")
    out = tmp_path / "prepared"
    prepare_tokens(open_source(str(corpus)), tokenizer, out, PrepareSettings(workers=1))
    (corpus / "doc00.txt").write_text("changed")
    with pytest.raises(DataError, match="source differ: the source changed since"):
        prepare_tokens(open_source(str(corpus)), tokenizer, out, PrepareSettings(workers=1))
    other = train_tokenizer("char", ["xyz"])
    with pytest.raises(DataError, match="was prepared with another tokenizer"):
        open_prepared(out, other)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="is not empty and holds no prepared tokens"):
        prepare_tokens(open_source(str(corpus)), tokenizer, tmp_path / "busy", PrepareSettings(workers=1))
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_verify_finds_a_damaged_shard(tokenizer: TextTokenizer, tmp_path: Path) -> None:
    corpus = _file_corpus(tmp_path / "corpus")
    out = tmp_path / "prepared"
    prepare_tokens(open_source(str(corpus)), tokenizer, out, PrepareSettings(workers=1, shard_mb=TINY_SHARDS))
    assert verify_prepared(out, PrepareSettings(workers=1))["identity_unchanged"]
    shard = np.memmap(out / "shard-000002.bin", dtype=np.uint16, mode="r+")
    shard[10] = (int(shard[10]) + 1) % tokenizer.vocab_size
    shard.flush()
    del shard
    position = json.loads((out / "manifest.json").read_text())["shards"][0]["tokens"] * 2 + 10
    with pytest.raises(DataError, match=f"token {position:,} differs from the source's ids"):
        verify_prepared(out, PrepareSettings(workers=1))


def test_the_run_cache_is_found_again_without_reading_the_corpus(
    tokenizer: TextTokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRANSFORMER_CACHE", str(tmp_path / "cache"))
    corpus = _file_corpus(tmp_path / "corpus")
    first = prepare_corpus(str(corpus), tokenizer)

    def no_reading(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the corpus was read again")

    monkeypatch.setattr("transformer.data.sources._file_pieces", no_reading)
    again = prepare_corpus(str(corpus), tokenizer, val_fraction=0.2)  # another split of the same tokens
    assert again.directory == first.directory
    assert len(again.val) > len(first.val) and len(again.train) + len(again.val) == len(first.train) + len(first.val)


@pytest.mark.skipif(importlib.util.find_spec("datasets") is None, reason="the optional `datasets` package is absent")
def test_a_local_hugging_face_dataset_streams_like_its_rows(
    tokenizer: TextTokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    rows = [*builtin_documents()[:12], "   ", "the end"]
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    with open(dataset / "train.jsonl", "w", encoding="utf-8") as file:
        for index, text in enumerate(rows):
            file.write(json.dumps({"story": text, "id": index}) + "\n")
    source = open_source(f"hf:{dataset}:train:story")
    out = tmp_path / "prepared"
    prepare_tokens(source, tokenizer, out, PrepareSettings(workers=1, shard_mb=TINY_SHARDS))
    reference = _reference([text for text in rows if text.strip()], tokenizer, 0.1)
    data = open_prepared(out, tokenizer)
    for split in ("train", "val"):
        np.testing.assert_array_equal(np.asarray(data.split(split)), reference[split])
    pieces = list(source.pieces(200))
    resumed = list(source.pieces(200, start=pieces[40].position))  # earlier rows skipped, not encoded
    assert [(p.text, p.last) for p in resumed] == [(p.text, p.last) for p in pieces[40:]]
    with pytest.raises(DataError, match="no field 'text'"):
        prepare_tokens(open_source(f"hf:{dataset}"), tokenizer, tmp_path / "other", PrepareSettings(workers=1))


_MEASURE = """
import sys, time
from pathlib import Path
from transformer.data.prepare import PrepareSettings, prepare_tokens
from transformer.data.sources import open_source
from transformer.data.tokenizer import TextTokenizer

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

if __name__ == "__main__":
    corpus, tokenizer_path, out, budget = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    tokenizer = TextTokenizer.load(tokenizer_path)
    source = open_source(corpus)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the high-water mark starts again from here
    before = rss("VmRSS")
    manifest = prepare_tokens(source, tokenizer, out, PrepareSettings(workers=1, memory_mb=budget, shard_mb=16))
    print(before, rss("VmHWM"), manifest["tokens"] * 2)
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="measures memory through Linux's /proc")
@pytest.mark.parametrize(("kind", "corpus_mb", "budget_mb"), [("char", 128, 32), ("bpe", 96, 32)])
def test_memory_stays_under_the_bound(tmp_path: Path, kind: str, corpus_mb: int, budget_mb: int) -> None:
    """A corpus whose ids are several times the budget: the process grows by less than the budget."""
    text = "\n\n".join(builtin_documents())
    corpus = tmp_path / "corpus.txt"
    with open(corpus, "w", encoding="utf-8") as file:
        for _ in range(corpus_mb * (1 << 20) // len(text) + 1):
            file.write(text + "\n\n")
    train_tokenizer(kind, [text], None if kind == "char" else 512).save(tmp_path / "tokenizer.json")
    script = tmp_path / "measure.py"
    script.write_text(_MEASURE)
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    environment.pop("TRANSFORMER_TYPECHECK", None)
    result = subprocess.run(
        [
            sys.executable,
            str(script),
            str(corpus),
            str(tmp_path / "tokenizer.json"),
            str(tmp_path / "out"),
            str(budget_mb),
        ],
        capture_output=True,
        text=True,
        env=environment,
        check=True,
        timeout=600,
    )
    before, peak, token_bytes = map(int, result.stdout.split())
    assert token_bytes > 2 * (budget_mb << 20), "the corpus's ids are several times the budget"
    assert peak - before <= budget_mb << 20, f"grew by {(peak - before) / 2**20:.1f} MB on a {budget_mb} MB budget"


@pytest.mark.slow
def test_a_preparation_killed_by_signal_resumes_to_the_same_files(tmp_path: Path) -> None:
    """The real thing: SIGKILL while shards are being written, then the same command again."""
    text = "\n\n".join(builtin_documents())
    corpus = tmp_path / "corpus.txt"
    corpus.write_text((text + "\n\n") * 40, encoding="utf-8")  # about 18 MB
    train_tokenizer("char", [text]).save(tmp_path / "tokenizer.json")
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    environment.pop("TRANSFORMER_TYPECHECK", None)

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "transformer", "data", "prepare", str(corpus), "--out", str(out)] + [
            "--tokenizer", str(tmp_path / "tokenizer.json"), "--shard-mb", "1", "--workers", "2", "--memory-mb", "32"
        ]  # fmt: skip

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(command(whole), env=environment, check=True, capture_output=True, timeout=600)
    process = subprocess.Popen(command(killed), env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        manifest = killed / "manifest.json"
        if manifest.exists() and len(json.loads(manifest.read_text())["shards"]) >= 3:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the preparation finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not json.loads((killed / "manifest.json").read_text())["complete"]
    subprocess.run(command(killed), env=environment, check=True, capture_output=True, timeout=600)
    assert _contents(killed, ("shard-", "manifest", "tokenizer")) == _contents(
        whole, ("shard-", "manifest", "tokenizer")
    )
