"""`transformer generate` and `transformer chat` on tiny trained runs: they print what the model
writes (checked against the uncached sampling loop), follow the chat commands, and turn every
user error into one line on stderr and exit status 2."""

import gc
import io
import weakref
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tests.helpers.tiny_runs import tiny_run_config
from transformer.commands.main import main
from transformer.inference.loading import load_trained
from transformer.inference.sampling import sample
from transformer.training.config import build_model
from transformer.training.trainer import train

PROMPT = "The assert"  # 10 tokens (char tokenizer): the routed run's prefix is 4, n_ctx is 16


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """A plain and a routed run (route_prefix_len = 4, n_ctx = 16), 6 steps each."""
    folders = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRANSFORMER_CACHE", str(tmp_path_factory.mktemp("cache")))
        for kind in ("plain", "routed"):
            config = tiny_run_config(tmp_path_factory.mktemp(kind), kind == "routed")
            train(config)
            folders[kind] = Path(config.train.out_dir)
        yield folders


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def uncached_text(run_dir: Path, prompt: str, new_tokens: int, temperature: float, seed: int) -> str:
    """What the trainer's plain sampling loop (full forward per token) writes after `prompt`."""
    run = load_trained(run_dir)
    ids = run.tokenizer.encode(prompt)
    out = sample(run.model, torch.tensor([ids]), new_tokens, temperature, generator=torch.Generator().manual_seed(seed))
    return run.tokenizer.decode(out[0, len(ids) :].tolist())


@pytest.mark.parametrize("kind", ["plain", "routed"])
def test_generate_prints_the_continuation_the_model_writes(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    """12 new tokens after 10 overflow n_ctx = 16: 7 steps on the cache, 5 on a sliding window."""
    for temperature in ("0", "1"):
        code, out, _ = run_cli(
            capsys,
            "generate",
            "--run",
            str(runs[kind]),
            "--prompt",
            PROMPT,
            "--max-new-tokens",
            "12",
            "--temperature",
            temperature,
            "--seed",
            "3",
        )
        assert code == 0
        assert out == uncached_text(runs[kind], PROMPT, 12, float(temperature), seed=3) + "\n"


def test_the_same_seed_gives_the_same_text(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    def text(seed: str, checkpoint: str = "latest") -> str:
        code, out, _ = run_cli(
            capsys,
            "generate",
            "--run",
            str(runs["plain"]),
            "--checkpoint",
            checkpoint,
            "--prompt",
            PROMPT,
            "--max-new-tokens",
            "6",
            "--seed",
            seed,
        )
        assert code == 0
        return out

    first = text("5")
    assert text("5") == first and text("6") != first
    step_6 = str(runs["plain"] / "checkpoints" / "step_0000006")
    assert text("5", step_6) == first, "latest is step 6 in a 6-step run"
    assert text("5", "best") == first, "best is step 6 too: val loss fell at every evaluation"


def test_chat_answers_follows_its_commands_and_quits(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = ["temp 0.5", PROMPT, "temp hot", "topk 0", "topk -3", "", "quit", PROMPT]
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(line + "\n" for line in lines)))
    code, out, _ = run_cli(capsys, "chat", "--run", str(runs["plain"]), "--max-new-tokens", "12", "--seed", "9")
    assert code == 0
    answer = uncached_text(runs["plain"], PROMPT, 12, 0.5, seed=9)
    shown = out.splitlines()
    assert shown[0].startswith("chatting with") and shown[1] == "temperature = 0.5"
    assert out.count(answer) == 1, "one answer: the line after `quit` is never read"
    after = out.split(answer, 1)[1].splitlines()[1:]
    assert after[0] == "('hot' is not a number: e.g. temp 0.8 (0: greedy))"
    assert after[1] == "top_k = off"
    assert after[2] == "(topk -3 is out of range: e.g. topk 40 (0: off))"
    assert after[3].startswith("(a line is a prompt") and len(after) == 4


def test_chat_ends_at_end_of_input_and_hints_at_too_short_routed_prompts(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(f"The\n{PROMPT}\n"))
    code, out, _ = run_cli(capsys, "chat", "--run", str(runs["routed"]), "--max-new-tokens", "12", "--seed", "9")
    assert code == 0
    shown = out.splitlines()
    assert "fewer than the routing prefix route_prefix_len=4" in shown[1]
    assert out.endswith(uncached_text(runs["routed"], PROMPT, 12, 1.0, seed=9) + "\n")


@pytest.mark.parametrize("command", ["generate", "chat"])
def test_user_errors_are_one_line_on_stderr_and_exit_2(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str
) -> None:
    plain, routed = str(runs["plain"]), str(runs["routed"])
    cases = [
        (["--run", str(tmp_path / "nowhere")], "does not exist"),
        (["--run", str(tmp_path)], "no checkpoint in"),
        (["--run", plain, "--checkpoint", str(tmp_path / "missing")], "does not exist"),
        (["--run", plain, "--temperature", "-1"], "temperature=-1.0 must be >= 0"),
        (["--run", plain, "--top-p", "1.5"], "top_p=1.5 must be in (0, 1]"),
    ]
    if command == "generate":
        cases.append((["--run", routed, "--prompt", "The"], "fewer than the routing prefix route_prefix_len=4"))
    for options, message in cases:
        code, _, err = run_cli(capsys, command, *options)
        assert code == 2
        assert err.startswith(f"transformer {command}: error: ") and message in err, err
        assert err.count("\n") == 1, err


def test_generate_draws_only_ids_the_tokenizer_decodes_and_keeps_only_ids(
    runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A d_vocab padded 8 above the tokenizer, the padding ids' logits far the largest: before,
    `generate` drew them and the tokenizer dropped them from the text. And the command keeps no
    step's logits once it has its id (before: every step's, d_vocab floats each)."""
    from transformer.commands import generate as command
    from transformer.inference import generation

    run = load_trained(runs["plain"])
    size = run.tokenizer.vocab_size
    torch.manual_seed(0)
    model = build_model(replace(run.config, model=replace(run.config.model, d_vocab=size + 8))).eval()
    with torch.no_grad():
        model.unembed.b_U[size:] = 50.0
    padded = replace(run, model=model)
    decoded: list[list[int]] = []
    decode = run.tokenizer.decode

    def recording_decode(ids: list[int]) -> str:
        decoded.append(ids)
        return decode(ids)

    monkeypatch.setattr(run.tokenizer, "decode", recording_decode)
    alive_at_end: list[int] = []
    real_stream = generation.stream

    def watched(*args: object, **kwargs: object) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        refs = []
        for token, logits in real_stream(*args, **kwargs):  # type: ignore[arg-type]
            refs.append(weakref.ref(logits))
            yield token, logits
            del logits
        gc.collect()
        alive_at_end.append(sum(ref() is not None for ref in refs))

    monkeypatch.setattr(generation, "stream", watched)
    settings = command.Settings(max_new_tokens=20, temperature=1.0, top_k=None, top_p=None)
    text = command.continuation(padded, PROMPT, settings, torch.Generator().manual_seed(0))
    assert len(decoded) == 1 and len(decoded[0]) == 20 and max(decoded[0]) < size
    assert text == decode(decoded[0])
    assert len(alive_at_end) == 1 and alive_at_end[0] <= 1  # at most the step in hand, not 20


def test_huge_or_negative_token_counts_are_refused_before_loading(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Before, 10**20 new tokens ran until memory ran out (~70 MB/s)."""
    code, _, err = run_cli(capsys, "generate", "--run", str(tmp_path), "--max-new-tokens", str(10**20))
    assert code == 2 and "max_new_tokens=100000000000000000000 must be between 0 and 1,000,000" in err
    for option, value in (("--max-new-tokens", "-5"), ("--top-k", "0"), ("--temperature", "nan"), ("--seed", "-1")):
        with pytest.raises(SystemExit) as exit_info:
            main(["generate", "--run", str(tmp_path), option, value])
        assert exit_info.value.code == 2
        assert f"argument {option}: '{value}' is not" in capsys.readouterr().err
