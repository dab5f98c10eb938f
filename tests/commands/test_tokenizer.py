"""`transformer tokenizer train | analyze | encode`, through the real entry point: the files and
numbers they print match the library's, and user errors are one line on stderr with status 2."""

import re
import sys
from pathlib import Path

import pytest

from transformer.commands.main import main
from transformer.data.tokenizer import TextTokenizer, analyze, train_tokenizer

CORPUS = "The cat sat on the mat. The dog sat on the log.\n" * 40


@pytest.fixture()
def corpus_file(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS, encoding="utf-8")
    return path


def test_train_writes_the_tokenizer_it_describes(
    corpus_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tok" / "tokenizer.json"
    assert (
        main(
            [
                "tokenizer",
                "train",
                "--kind",
                "bpe",
                "--vocab-size",
                "300",
                "--data",
                str(corpus_file),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    tokenizer = TextTokenizer.load(out)
    assert tokenizer.fingerprint() == train_tokenizer("bpe", [CORPUS], 300).fingerprint()
    # This small corpus runs out of pairs seen twice before 300 entries; the summary says so.
    assert tokenizer.kind == "bpe" and tokenizer.vocab_size < 300
    assert f"{tokenizer.vocab_size} tokens" in printed and "asked for 300" in printed
    n_tokens = len(tokenizer.encode(CORPUS))
    assert f"{len(CORPUS):,} characters -> {n_tokens:,} tokens" in printed


def test_train_char_on_the_builtin_corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tokenizer", "train", "--kind", "char", "--out", str(tmp_path)]) == 0
    tokenizer = TextTokenizer.load(tmp_path / "tokenizer.json")
    assert tokenizer.kind == "char"
    assert f"{tokenizer.vocab_size - 257} learned" in capsys.readouterr().out


def test_analyze_prints_the_library_analysis(
    corpus_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tokenizer = train_tokenizer("bpe", [CORPUS], 300)
    tokenizer.save(tmp_path / "tok.json")
    assert (
        main(
            [
                "tokenizer",
                "analyze",
                "--tokenizer",
                str(tmp_path / "tok.json"),
                "--data",
                str(corpus_file),
                "--min-count",
                "5",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    expected = analyze(tokenizer, [CORPUS], min_count=5)
    assert re.search(rf"^tokens\s+{int(expected['tokens']):,}$", printed, re.MULTILINE)
    assert re.search(rf"^chars_per_token\s+{float(expected['chars_per_token']):.4f}$", printed, re.MULTILINE)
    assert f"suggested vocab size: {int(expected['suggested_vocab_size']):,} (" in printed


def test_analyze_can_train_first(corpus_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tokenizer", "analyze", "--kind", "char", "--data", str(corpus_file)]) == 0
    printed = capsys.readouterr().out
    distinct = len(set(CORPUS))
    assert re.search(rf"^vocab_size\s+{257 + distinct}$", printed, re.MULTILINE)
    assert re.search(r"^tokens_per_char\s+1\.0000$", printed, re.MULTILINE)


def test_encode_prints_ids_and_tokens(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tokenizer = train_tokenizer("char", ["abc"])
    tokenizer.save(tmp_path / "tok.json")
    assert main(["tokenizer", "encode", "--tokenizer", str(tmp_path / "tok.json"), "cab é"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("6 tokens for 5 characters")
    assert lines[1] == "ids: " + " ".join(str(i) for i in tokenizer.encode("cab é"))
    # "é" is not in the vocabulary: it is spelled as its two UTF-8 bytes
    assert lines[2] == "tokens: 'c' 'a' 'b' ' ' b'\\xc3' b'\\xa9'"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["tokenizer", "encode", "--tokenizer", "{tmp}/missing.json", "hi"], "no tokenizer file at"),
        (["tokenizer", "encode", "--tokenizer", "{tmp}/corrupt.json", "hi"], "not a valid tokenizer.json"),
        (["tokenizer", "train", "--kind", "bpe", "--vocab-size", "100", "--out", "{tmp}/t.json"], "at least 257"),
        (["tokenizer", "train", "--kind", "bpe", "--out", "{tmp}/t.json"], "needs a vocab size"),
        (
            ["tokenizer", "train", "--kind", "char", "--data", "{tmp}/nowhere", "--out", "{tmp}/t.json"],
            "no such file or folder",
        ),
        (
            ["tokenizer", "analyze", "--tokenizer", "{tmp}/corrupt.json", "--vocab-size", "300"],
            "--vocab-size goes with --kind",
        ),
        (["tokenizer", "analyze", "--kind", "char", "--data", "hf:no-such-dataset"], "hf:no-such-dataset"),
    ],
)
def test_user_errors_are_one_line_and_status_2(
    argv: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # as on a machine without it
    (tmp_path / "corrupt.json").write_text("{not json")
    assert main([arg.replace("{tmp}", str(tmp_path)) for arg in argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1 and message in captured.err
    assert captured.err.startswith("transformer tokenizer ") and "Traceback" not in captured.err


def test_argument_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["tokenizer", "train", "--kind", "bpe", "--vocab-size", "many", "--out", "x.json"])
    assert exit_info.value.code == 2 and "invalid int value: 'many'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["tokenizer"])
    assert exit_info.value.code == 2
