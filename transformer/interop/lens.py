"""A `Decoder` as a TransformerLens `HookedTransformer` computing the same logits.

TransformerLens names its parameters as we do (`W_Q` [n_heads, d_model, d_head], `W_O`
[n_heads, d_head, d_model], `ln1.w`, `unembed.W_U`, ...), so the copy renames `layers.i` to
`blocks.i` and fills in what it keeps and we may leave out (zero biases, a tied unembedding as
its own matrix). Our rotary pairs adjacent dimensions, TransformerLens's
`rotary_adjacent_pairs=True`; sinusoidal positions become its learned `W_pos` holding our
table. Not carried over: ALiBi, no positions at all, and a SwiGLU MLP with biases
(TransformerLens adds b_in after the gate, we before it).

The optional `interp` extra installs transformer-lens. Its 3.x line is the one with
`HookedTransformer` (4.0 removed it for `TransformerBridge`, which wraps a Hugging Face model
instead: transformer/interop/hf.py writes one). transformer-lens needs typeguard >= 4.2 while
the dev group pins 2.13.3 for jaxtyping's checks, so it lives in its own environment: .ci/run
builds one and runs tests/interop/test_lens.py there; the main suite skips that file.
"""

from typing import Any

import torch

from transformer.interop.errors import InteropError
from transformer.model.decoder import Decoder

ACT_FN = {"gelu": "gelu", "gelu_tanh": "gelu_new", "swiglu": "silu"}
POSITIONS = {"learned": "standard", "sinusoidal": "standard", "rotary": "rotary"}


def hooked_transformer_config(model: Decoder) -> Any:
    """The `HookedTransformerConfig` of `model`; refuses what TransformerLens computes differently."""
    from transformer_lens import HookedTransformerConfig

    cfg = model.cfg
    if cfg.positional not in POSITIONS:
        raise InteropError(
            f"TransformerLens conversion supports positional in {sorted(POSITIONS)}, not {cfg.positional!r}"
        )
    if cfg.mlp == "swiglu" and cfg.bias and not cfg.attn_only:
        raise InteropError(
            "TransformerLens adds a gated MLP's b_in after the gate, this model before it: use bias=False"
        )
    dtype = model.embed.W_E.dtype
    return HookedTransformerConfig(
        n_layers=cfg.n_layers,
        d_model=cfg.d_model,
        n_ctx=cfg.n_ctx,
        d_head=cfg.d_head,
        n_heads=cfg.n_heads,
        d_mlp=cfg.d_mlp,
        d_vocab=cfg.d_vocab,
        act_fn=ACT_FN[cfg.mlp],
        gated_mlp=cfg.mlp == "swiglu",
        attn_only=cfg.attn_only,
        normalization_type="LN" if cfg.norm == "layernorm" else "RMS",
        eps=cfg.norm_eps,
        positional_embedding_type=POSITIONS[cfg.positional],
        rotary_dim=cfg.rotary_dim if cfg.positional == "rotary" else None,
        rotary_base=cfg.rope_base,
        rotary_adjacent_pairs=True,
        default_prepend_bos=False,
        dtype=dtype,
        device="cpu",
    )


def hooked_transformer_state(model: Decoder) -> dict[str, torch.Tensor]:
    """Our weights under TransformerLens's names, with zeros where we keep no bias."""
    cfg = model.cfg
    dtype = model.embed.W_E.dtype
    state: dict[str, torch.Tensor] = {}

    def zeros(*shape: int) -> torch.Tensor:
        return torch.zeros(*shape, dtype=dtype)

    for name, value in model.state_dict().items():
        if name.startswith("layers."):
            name = "blocks." + name.removeprefix("layers.")
        if name != "unembed.W_U":
            state[name] = value.detach().clone()
    if model.pos_embed is not None:
        state["pos_embed.W_pos"] = model.pos_embed.W_pos.detach().clone()
    state["unembed.W_U"] = model.unembed.weight.detach().clone()
    for i in range(cfg.n_layers):
        block = f"blocks.{i}."
        for bias, shape in (("b_Q", (cfg.n_heads, cfg.d_head)), ("b_K", (cfg.n_heads, cfg.d_head))):
            state.setdefault(block + f"attn.{bias}", zeros(*shape))
        state.setdefault(block + "attn.b_V", zeros(cfg.n_heads, cfg.d_head))
        state.setdefault(block + "attn.b_O", zeros(cfg.d_model))
        if not cfg.attn_only:
            state.setdefault(block + "mlp.b_in", zeros(cfg.d_mlp))
            state.setdefault(block + "mlp.b_out", zeros(cfg.d_model))
    return state


def to_hooked_transformer(model: Decoder) -> Any:
    """A `transformer_lens.HookedTransformer` with `model`'s weights, in eval mode."""
    try:
        from transformer_lens import HookedTransformer
    except ImportError:
        raise InteropError(
            "the TransformerLens conversion needs transformer-lens 3.x in its own environment "
            "(it requires typeguard>=4.2): pip install 'transformer[interp]'"
        ) from None
    lens = HookedTransformer(hooked_transformer_config(model))
    state = hooked_transformer_state(model)
    missing, unexpected = lens.load_state_dict(state, strict=False)
    # TransformerLens keeps non-parameter buffers (masks, rotary tables) in its state dict.
    parameters = {name for name, _ in lens.named_parameters()}
    missing = [name for name in missing if name in parameters]
    if missing or unexpected:
        raise InteropError(f"TransformerLens parameters not filled: {missing}; unused: {unexpected}")
    return lens.eval()
