"""Hugging Face GPT-2 and Llama weights in our `Decoder`: equal logits on both kernel paths,
and bit-exact round trips in both directions, in memory and through the folder format."""

from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

from tests.interop import hf_models
from transformer.errors import UserError
from transformer.interop.hf import from_hf, load_hf, save_hf, to_hf

MAKERS = {"gpt2": hf_models.gpt2, "llama": hf_models.llama}


def their_logits(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens).logits  # type: ignore[no-any-return]


@pytest.mark.parametrize("kernels", ["readable", "fast"])
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_equal_logits(kind: str, kernels: str) -> None:
    theirs = MAKERS[kind]()
    ours = from_hf(theirs.config.to_dict(), theirs.state_dict(), kernels)
    tokens = hf_models.tokens()
    expected = their_logits(theirs, tokens)
    with torch.no_grad():
        got = ours(tokens).logits
    assert expected.std() > 0.2, "scrambled weights: logits far from uniform (default init gives ~0.02)"
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_gpt2_untied_and_exact_gelu() -> None:
    theirs = hf_models.gpt2(tie_word_embeddings=False, activation_function="gelu")
    ours = from_hf(theirs.config.to_dict(), theirs.state_dict())
    assert ours.cfg.mlp == "gelu" and not ours.cfg.tie_embeddings
    with torch.no_grad():
        torch.testing.assert_close(
            ours(hf_models.tokens()).logits, their_logits(theirs, hf_models.tokens()), atol=1e-5, rtol=0
        )


@pytest.mark.parametrize("n_kv_heads", [1, 2, 4])
def test_llama_grouped_query_attention_loads_and_saves_its_groups(n_kv_heads: int) -> None:
    theirs = hf_models.llama(num_key_value_heads=n_kv_heads, tie_word_embeddings=True)
    ours = from_hf(theirs.config.to_dict(), theirs.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(
            ours(hf_models.tokens()).logits, their_logits(theirs, hf_models.tokens()), atol=1e-5, rtol=0
        )
    config, _ = to_hf(ours, "llama")
    assert config["num_key_value_heads"] == n_kv_heads


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_round_trip_is_bit_exact(kind: str) -> None:
    """theirs -> ours -> theirs gives the same tensors; ours -> theirs -> ours too."""
    theirs = MAKERS[kind]()
    state = theirs.state_dict()
    ours = from_hf(theirs.config.to_dict(), state)
    config, back = to_hf(ours, kind)
    tied = {"lm_head.weight"} if theirs.config.tie_word_embeddings else set()
    assert set(back) == set(state) - tied
    for key, value in back.items():
        assert torch.equal(value, state[key]), key
    again = from_hf(config, back)
    for (name, value), (_, expected) in zip(again.state_dict().items(), ours.state_dict().items(), strict=True):
        assert torch.equal(value, expected), name


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_saved_folder_loads_in_transformers_with_equal_logits(kind: str, tmp_path: Path) -> None:
    theirs = MAKERS[kind]()
    ours = from_hf(theirs.config.to_dict(), theirs.state_dict())
    save_hf(ours, tmp_path, kind)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager")
    reloaded.eval()  # type: ignore[no-untyped-call]
    tokens = hf_models.tokens()
    torch.testing.assert_close(their_logits(reloaded, tokens), their_logits(theirs, tokens), atol=0, rtol=0)
    assert torch.equal(load_hf(tmp_path).state_dict()["embed.W_E"], ours.state_dict()["embed.W_E"])


def test_what_cannot_be_carried_over_is_a_user_error(tmp_path: Path) -> None:
    theirs = hf_models.gpt2()
    with pytest.raises(UserError, match="activation_function='relu'"):
        from_hf({**theirs.config.to_dict(), "activation_function": "relu"}, theirs.state_dict())
    with pytest.raises(UserError, match="rope_type='llama3'"):
        llama = hf_models.llama()
        from_hf({**llama.config.to_dict(), "rope_parameters": {"rope_type": "llama3"}}, llama.state_dict())
    with pytest.raises(UserError, match="model_type='bert'"):
        from_hf({"model_type": "bert"}, {})
    ours = from_hf(theirs.config.to_dict(), theirs.state_dict())
    with pytest.raises(UserError, match="Llama needs positional='rotary'"):
        to_hf(ours, "llama")
    with torch.no_grad():
        ours.unembed.b_U.add_(1.0)
    with pytest.raises(UserError, match="no unembedding bias"):
        to_hf(ours, "gpt2")
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(UserError, match="pickle"):
        load_hf(tmp_path)
