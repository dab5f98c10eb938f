"""`transformer data prepare | verify` and `tokenizer train --sample-mb`, through the real entry
point: what they print is what they wrote, a second run finds the work done, and user errors are
one line on stderr with status 2."""

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.cli import run_cli
from tests.helpers.tiny_runs import write_corpus
from transformer.data.corpus import load_documents
from transformer.data.tokenizer import TextTokenizer, train_tokenizer
from transformer.data.tokens import prepare_corpus


def test_prepare_writes_what_it_says_and_a_second_run_finds_it_done(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus, out = write_corpus(tmp_path / "corpus"), tmp_path / "prepared"
    args = ["data", "prepare", str(corpus), "--tokenizer", "bpe", "--vocab-size", "400", "--out", str(out)]
    code, printed, _ = run_cli([*args, "--shard-mb", "0.004"], capsys)
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    tokenizer = TextTokenizer.load(out / "tokenizer.json")
    assert tokenizer.fingerprint() == train_tokenizer("bpe", load_documents(str(corpus)), 400).fingerprint()
    assert f"{manifest['tokens']:,} tokens (uint16) in {len(manifest['shards'])} shards, 12 documents" in printed
    assert f"--set train.data={out}" in printed
    data = prepare_corpus(str(out), tokenizer)
    assert len(data.train) + len(data.val) == manifest["tokens"]
    code, printed, _ = run_cli(args, capsys)
    assert code == 0 and f"{out} already holds them" in printed
    code, printed, _ = run_cli(["data", "verify", str(out)], capsys)
    assert code == 0 and f"all {manifest['tokens']:,} tokens and 12 document ends match the source" in printed


def test_verify_reports_damage_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus, out = write_corpus(tmp_path / "corpus"), tmp_path / "prepared"
    assert run_cli(["data", "prepare", str(corpus), "--tokenizer", "char", "--out", str(out)], capsys)[0] == 0
    shard = np.memmap(out / "shard-000000.bin", dtype=np.uint16, mode="r+")
    shard[3] = (int(shard[3]) + 1) % 300
    shard.flush()
    del shard
    code, _, error = run_cli(["data", "verify", str(out)], capsys)
    assert code == 2
    assert error.startswith("transformer data verify: error: ") and "token 3 differs" in error
    assert error.count("\n") == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tokenizer", "bpe"], "--tokenizer bpe needs --vocab-size"),
        (["--tokenizer", "char", "--memory-mb", "4"], "memory_mb >= 32"),
        (["--tokenizer", "nowhere.json"], "no tokenizer file at nowhere.json"),
        (["--tokenizer", "char", "--out", "corpus/doc00.txt"], "is a file, not a folder for prepared tokens"),
    ],
)
def test_prepare_errors_are_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    extra: list[str],
    message: str,
) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    monkeypatch.chdir(tmp_path)
    code, _, error = run_cli(["data", "prepare", str(corpus), "--out", "out", *extra], capsys)
    assert code == 2 and message in error and error.count("\n") == 1


def test_a_folder_started_with_one_tokenizer_is_not_finished_with_another(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus, out = write_corpus(tmp_path / "corpus"), tmp_path / "prepared"
    assert run_cli(["data", "prepare", str(corpus), "--tokenizer", "char", "--out", str(out)], capsys)[0] == 0
    args = ["data", "prepare", str(corpus), "--tokenizer", "bpe", "--vocab-size", "300", "--out", str(out)]
    code, _, error = run_cli(args, capsys)
    assert code == 2 and "was started with another tokenizer (char" in error


def test_tokenizer_train_learns_from_a_bounded_sample(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "big.txt"
    corpus.write_text(("The cat sat on the mat. Le chat était assis.\n" * 30_000), encoding="utf-8")  # 1.4 MB
    args = ["tokenizer", "train", "--kind", "char", "--data", str(corpus), "--out", str(tmp_path / "tok.json")]
    code, printed, _ = run_cli([*args, "--sample-mb", "1"], capsys)
    assert code == 0 and "sample of the corpus: 64 documents" in printed
    characters = int(printed.split("documents, ")[1].split(" characters")[0].replace(",", ""))
    assert characters <= 1 << 20
    code, printed, _ = run_cli([*args, "--sample-mb", "2"], capsys)
    assert code == 0 and "corpus: 1 documents" in printed and "sample" not in printed
