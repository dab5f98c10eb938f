"""Tiny randomly initialised `transformers` models (no download), every weight moved off its
init so that each one matters to the logits."""

from typing import Any

import torch
import transformers


def scrambled(model: Any, seed: int) -> Any:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
            is_gain = "norm" in name or "ln_" in name
            parameter.copy_((1.0 if is_gain else 0.0) + (0.2 if is_gain else 0.08) * noise)
    return model.eval()


def gpt2(seed: int = 0, **overrides: Any) -> Any:
    values: dict[str, Any] = dict(
        vocab_size=97, n_positions=24, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0
    )
    values.update(overrides)
    torch.manual_seed(seed)
    config = transformers.GPT2Config(bos_token_id=0, eos_token_id=0, **values)
    config._attn_implementation = "eager"  # the kernel from_pretrained is asked for in the tests
    return scrambled(transformers.GPT2LMHeadModel(config), seed)


def llama(seed: int = 0, **overrides: Any) -> Any:
    values: dict[str, Any] = dict(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=24,
        rms_norm_eps=1e-6,
        bos_token_id=0,
        eos_token_id=0,
    )
    values.update(overrides)
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(**values)
    config._attn_implementation = "eager"
    return scrambled(transformers.LlamaForCausalLM(config), seed)


def tokens(batch: int = 2, pos: int = 24, d_vocab: int = 97, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, d_vocab, (batch, pos), generator=torch.Generator().manual_seed(seed))
