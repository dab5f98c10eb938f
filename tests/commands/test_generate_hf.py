"""`transformer generate --hf FOLDER` runs a Hugging Face GPT-2 through our modules: greedy
decoding writes what `transformers`' own greedy `generate` writes. (`--hf gpt2` downloads the
real model; that needs the network and is not tested here.)"""

from pathlib import Path

import pytest
import torch

from tests.interop import hf_models
from transformer.commands.main import main
from transformer.data.tokenizer import train_tokenizer
from transformer.interop.hf import from_hf, save_hf

PROMPT = "the cat sat on"


def test_greedy_continuation_equals_transformers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tokenizer = train_tokenizer("bpe", ["the cat sat on the mat", "the dog sat on the log"] * 20, vocab_size=300)
    theirs = hf_models.gpt2(vocab_size=tokenizer.vocab_size, n_positions=32)
    save_hf(from_hf(theirs.config.to_dict(), theirs.state_dict()), tmp_path, "gpt2")
    tokenizer.save(tmp_path)
    ids = tokenizer.encode(PROMPT)
    with torch.no_grad():
        expected_ids = theirs.generate(
            torch.tensor([ids]), max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eot_id
        )[0, len(ids) :]
    expected = tokenizer.decode(expected_ids.tolist())
    capsys.readouterr()
    argv = ["generate", "--hf", str(tmp_path), "--prompt", PROMPT, "--temperature", "0", "--max-new-tokens", "8"]
    assert main(argv) == 0
    assert capsys.readouterr().out == expected + "\n"


def test_run_and_hf_are_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["generate", "--hf", "gpt2", "--run", "somewhere"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_a_folder_without_weights_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    train_tokenizer("bpe", ["abc"] * 5, vocab_size=260).save(tmp_path)
    assert main(["generate", "--hf", str(tmp_path)]) == 2
    assert "no .safetensors weights" in capsys.readouterr().err
