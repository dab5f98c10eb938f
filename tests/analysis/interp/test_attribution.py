"""The residual stream is the sum of its writes, and direct logit attribution splits a logit
exactly (the final norm's scale frozen at its value on the whole stream)."""

import pytest
import torch

from tests.analysis.interp.models import random_tokens, scrambled_decoder
from transformer.analysis.interp.attribution import direct_logit_attribution, head_outputs, residual_components
from transformer.analysis.interp.heads import ablate_head
from transformer.analysis.interp.hooks import blocks, run_with_cache


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"attn_only": True, "tie_embeddings": True},
        {"norm": "rmsnorm", "mlp": "swiglu", "bias": False, "positional": "rotary"},
    ],
    ids=["gpt2-like", "attn-only-tied", "llama-like"],
)
def test_components_sum_to_the_stream_and_attribution_to_the_logit(overrides: dict[str, object]) -> None:
    model = scrambled_decoder(**overrides)
    tokens = random_tokens()
    logits, cache = run_with_cache(model, tokens)
    components = residual_components(model, cache)
    torch.testing.assert_close(components.values.sum(0), cache["blocks.1.hook_resid_post"], atol=1e-10, rtol=0)
    targets = random_tokens(seed=7)
    attribution = direct_logit_attribution(model, cache, targets)
    expected = logits.gather(-1, targets[..., None])[..., 0]
    torch.testing.assert_close(attribution.total(), expected, atol=1e-10, rtol=0)
    assert attribution.terms.abs().amax(dim=(1, 2)).min() > 1e-3, "every part contributes something"


def test_head_outputs_add_up_to_the_attention_output() -> None:
    model = scrambled_decoder()
    _, cache = run_with_cache(model, random_tokens())
    b_O = blocks(model)[0].attn.b_O
    assert b_O is not None
    total = head_outputs(model, cache, 0).sum(1) + b_O.detach()
    torch.testing.assert_close(total, cache["blocks.0.hook_attn_out"], atol=1e-10, rtol=0)


@pytest.mark.parametrize("how", ["zero", "mean"])
def test_ablating_a_last_layer_head_removes_exactly_its_write(how: str) -> None:
    """In the last layer of an attention-only model nothing reads a head's output but the final
    norm, so ablating it must give the logits of the clean stream minus that head's write plus
    the replacement's write."""
    model = scrambled_decoder(attn_only=True)
    tokens, reference_tokens = random_tokens(), random_tokens(seed=5)
    _, clean = run_with_cache(model, tokens)
    _, reference = run_with_cache(model, reference_tokens)
    z_ref = reference["blocks.1.attn.hook_z"]
    hook = ablate_head(1, how, z_ref)  # type: ignore[arg-type]
    ablated_logits, _ = run_with_cache(model, tokens, hooks={"blocks.1.attn.hook_z": hook})
    W_O = blocks(model)[1].attn.W_O.detach()
    replacement = torch.zeros(W_O.shape[-1], dtype=W_O.dtype) if how == "zero" else z_ref[:, 1].mean((0, 1)) @ W_O[1]
    stream = clean["blocks.1.hook_resid_post"] - head_outputs(model, clean, 1)[:, 1] + replacement
    with torch.no_grad():
        predicted = model.logits(stream)
    torch.testing.assert_close(ablated_logits, predicted, atol=1e-10, rtol=0)
    assert (ablated_logits - model.logits(clean["blocks.1.hook_resid_post"])).abs().max() > 1e-2


def test_mean_ablation_needs_a_reference() -> None:
    with pytest.raises(ValueError, match="reference"):
        ablate_head(0, "mean")
