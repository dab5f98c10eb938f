"""The cache holds what the forward pass computes, under TransformerLens's names; hooks can
replace activations and the model computes on with the replacement."""

import pytest
import torch

from tests.analysis.interp.models import random_tokens, scrambled_decoder
from transformer.analysis.interp.hooks import HookError, blocks, hook_sites, hooked, run_with_cache
from transformer.errors import UserError


def test_cache_holds_the_forward_pass_activations() -> None:
    model = scrambled_decoder()
    tokens = random_tokens()
    logits, cache = run_with_cache(model, tokens)
    layer0, layer1 = blocks(model)
    with torch.no_grad():
        attn, mlp, ln2 = layer0.attn, layer0.mlp, layer0.ln2
        assert attn.b_Q is not None and attn.b_K is not None and attn.b_V is not None and attn.b_O is not None
        assert mlp is not None and ln2 is not None
        resid = model.embed.W_E[tokens] + model.pos_embed.W_pos[: tokens.shape[1]]  # type: ignore[union-attr]
        normed = layer0.ln1(resid)
        q = torch.einsum("bpd,hde->bhpe", normed, attn.W_Q) + attn.b_Q[:, None]
        k = torch.einsum("bpd,hde->bhpe", normed, attn.W_K) + attn.b_K[:, None]
        v = torch.einsum("bpd,hde->bhpe", normed, attn.W_V) + attn.b_V[:, None]
        scores = (q @ k.transpose(-1, -2)) / model.cfg.d_head**0.5
        causal = torch.ones(10, 10, dtype=torch.bool).tril()
        pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        z = pattern @ v
        attn_out = torch.einsum("bhpe,hed->bpd", z, attn.W_O) + attn.b_O
        resid_mid = resid + attn_out
        resid_post = resid_mid + mlp(ln2(resid_mid))
        expected_logits = model(tokens).logits
    expected = {
        "blocks.0.hook_resid_pre": resid,
        "blocks.0.ln1.hook_normalized": normed,
        "blocks.0.attn.hook_q": q,
        "blocks.0.attn.hook_k": k,
        "blocks.0.attn.hook_v": v,
        "blocks.0.attn.hook_pattern": pattern,
        "blocks.0.attn.hook_z": z,
        "blocks.0.hook_attn_out": attn_out,
        "blocks.0.hook_resid_mid": resid_mid,
        "blocks.0.hook_resid_post": resid_post,
        "blocks.1.hook_resid_pre": resid_post,
    }
    for name, value in expected.items():
        torch.testing.assert_close(cache[name], value, atol=1e-10, rtol=0, msg=name)
    final = cache["blocks.1.hook_resid_post"]
    torch.testing.assert_close(cache["ln_final.hook_normalized"], model.ln_final(final), atol=1e-12, rtol=0)
    torch.testing.assert_close(logits, expected_logits, atol=1e-10, rtol=0)
    assert list(cache) == list(hook_sites(model)), "the cache is in forward order, one entry per hook"
    assert layer1.attn.fast, "recording switched to the readable path only while it ran"


def test_swiglu_mlp_hooks_are_its_gate_linear_and_hidden() -> None:
    model = scrambled_decoder(mlp="swiglu", norm="rmsnorm", bias=False, positional="rotary")
    _, cache = run_with_cache(model, random_tokens())
    gate, linear = cache["blocks.1.mlp.hook_pre"], cache["blocks.1.mlp.hook_pre_linear"]
    torch.testing.assert_close(cache["blocks.1.mlp.hook_post"], gate * torch.sigmoid(gate) * linear)
    mlp = blocks(model)[1].mlp
    assert mlp is not None
    torch.testing.assert_close(cache["blocks.1.hook_mlp_out"], cache["blocks.1.mlp.hook_post"] @ mlp.W_out)


def test_attention_only_model_has_no_mlp_hooks() -> None:
    sites = hook_sites(scrambled_decoder(attn_only=True))
    assert not [name for name in sites if "mlp" in name or "resid_mid" in name]
    assert "blocks.1.attn.hook_pattern" in sites


def test_a_hook_replacing_the_residual_stream_changes_what_follows() -> None:
    """Replacing resid_pre of the last block by zeros leaves only that block's own writes (from
    a constant input), so every position's logits become the same."""
    model = scrambled_decoder(positional="rotary")  # no position vector added after the hook
    with hooked(model, {"blocks.1.hook_resid_pre": lambda x, _: torch.zeros_like(x)}), torch.no_grad():
        logits = model(random_tokens()).logits
    assert blocks(model)[0].attn.fast, "leaving the block restored the fast path"
    torch.testing.assert_close(logits, logits[:, :1].expand_as(logits), atol=1e-10, rtol=0)
    assert not torch.allclose(model(random_tokens()).logits, logits)


def test_hooks_are_removed_on_leaving() -> None:
    model = scrambled_decoder()
    calls: list[str] = []
    with hooked(model, {"blocks.0.attn.hook_pattern": lambda x, name: calls.append(name)}):
        model(random_tokens())
    model(random_tokens())
    assert calls == ["blocks.0.attn.hook_pattern"]


def test_unknown_and_read_only_hooks_are_user_errors() -> None:
    model = scrambled_decoder()
    with pytest.raises(UserError, match="no hook named 'blocks.0.attn.hook_result'"):
        with hooked(model, {"blocks.0.attn.hook_result": lambda x, _: None}):
            pass
    with pytest.raises(HookError, match="read-only"):
        with hooked(model, {"blocks.0.hook_resid_mid": lambda x, _: x * 2}):
            model(random_tokens())
    with pytest.raises(HookError, match="shape"):
        with hooked(model, {"blocks.0.attn.hook_z": lambda x, _: x[:, :1]}):
            model(random_tokens())
