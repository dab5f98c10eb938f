"""A `Decoder` converted to a TransformerLens `HookedTransformer` gives the same logits, and
TransformerLens's cache under a hook name holds what ours holds under that name.

transformer-lens cannot share the dev environment (it needs typeguard >= 4.2), so this file is
skipped there; .ci/run runs it in an environment of its own."""

import pytest
import torch

from tests.analysis.interp.models import random_tokens, scrambled_decoder
from transformer.analysis.interp.hooks import run_with_cache
from transformer.errors import UserError
from transformer.interop.lens import to_hooked_transformer

pytest.importorskip("transformer_lens")

CONFIGS = {
    "gpt2-like": {},
    "gpt2-tanh-sinusoidal": {"mlp": "gelu_tanh", "positional": "sinusoidal", "tie_embeddings": True},
    "attn-only": {"attn_only": True},
    "llama-like": {"norm": "rmsnorm", "mlp": "swiglu", "bias": False, "positional": "rotary"},
    "partial-rotary": {"positional": "rotary", "rotary_dim": 4},
}


@pytest.mark.parametrize("overrides", list(CONFIGS.values()), ids=list(CONFIGS))
def test_equal_logits_and_equal_caches(overrides: dict[str, object]) -> None:
    model = scrambled_decoder(**overrides).float()
    lens = to_hooked_transformer(model)
    tokens = random_tokens()
    ours, cache = run_with_cache(model, tokens)
    with torch.no_grad():
        theirs, their_cache = lens.run_with_cache(tokens)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    for name in ("hook_embed", "blocks.0.hook_resid_pre", "blocks.0.attn.hook_pattern", "blocks.1.hook_resid_post"):
        torch.testing.assert_close(their_cache[name], cache[name], atol=1e-5, rtol=0, msg=name)
    # TransformerLens lays z out as [batch pos head d_head]; ours is [batch head pos d_head].
    torch.testing.assert_close(
        their_cache["blocks.1.attn.hook_z"], cache["blocks.1.attn.hook_z"].transpose(1, 2), atol=1e-5, rtol=0
    )


def test_alibi_is_refused() -> None:
    with pytest.raises(UserError, match="positional"):
        to_hooked_transformer(scrambled_decoder(positional="alibi"))
