"""GPT-2 (Hugging Face `GPT2LMHeadModel`) <-> `Decoder`: the same computation, weights renamed.

Our `Decoder` with learned positions, LayerNorm, a GELU MLP, biases and tied embeddings is
GPT-2's function; only the storage differs. GPT-2's `Conv1D` layers keep weights as [in, out]
and compute x @ W, as we do, so nothing is transposed. `attn.c_attn` holds Q, K and V side by
side, [d_model, 3 * d_model], each with its heads as contiguous blocks of d_head columns: a
reshape splits them into our [n_heads, d_model, d_head]. Pretrained checkpoints use the tanh
estimate of GELU ("gelu_new"), our `mlp="gelu_tanh"`. GPT-2 has no unembedding bias: loading
sets b_U to 0, and saving refuses a model whose b_U is not 0.
"""

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from transformer.interop.errors import InteropError
from transformer.model.config import ModelConfig

ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
SAVED_ACTIVATION = {"gelu_tanh": "gelu_new", "gelu": "gelu"}


def gpt2_model_config(hf: Mapping[str, Any], kernels: str = "fast") -> ModelConfig:
    """Our config for a GPT-2 config.json; refuses the options our modules do not compute."""
    activation = hf.get("activation_function", "gelu_new")
    if activation not in ACTIVATIONS:
        raise InteropError(f"GPT-2 activation_function={activation!r} is not one of {sorted(ACTIVATIONS)}")
    for key, wanted in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False)):
        if hf.get(key, wanted) != wanted:
            raise InteropError(f"GPT-2 {key}={hf[key]!r} is not supported: our attention scales by 1/sqrt(d_head)")
    if hf.get("add_cross_attention", False):
        raise InteropError("GPT-2 with cross-attention is an encoder-decoder part, not a decoder-only model")
    d_model = int(hf["n_embd"])
    return ModelConfig(
        d_vocab=int(hf["vocab_size"]),
        d_model=d_model,
        n_heads=int(hf["n_head"]),
        n_layers=int(hf["n_layer"]),
        n_ctx=int(hf["n_positions"]),
        d_mlp=int(hf.get("n_inner") or 4 * d_model),
        positional="learned",
        norm="layernorm",
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        mlp=ACTIVATIONS[activation],
        bias=True,
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        kernels=kernels,
    )


def gpt2_to_state(hf_state: Mapping[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """Our state dict from GPT-2's (with or without the `transformer.` prefix of
    `GPT2LMHeadModel`; the causal-mask buffers of old checkpoints are ignored)."""
    hf = {key.removeprefix("transformer."): value for key, value in hf_state.items()}
    n_heads, d_model, d_head = cfg.n_heads, cfg.d_model, cfg.d_head
    state = {
        "embed.W_E": hf["wte.weight"],
        "pos_embed.W_pos": hf["wpe.weight"],
        "ln_final.w": hf["ln_f.weight"],
        "ln_final.b": hf["ln_f.bias"],
    }
    assert cfg.d_vocab is not None
    state["unembed.b_U"] = torch.zeros(cfg.d_vocab, dtype=hf["wte.weight"].dtype)
    if not cfg.tie_embeddings:
        state["unembed.W_U"] = hf["lm_head.weight"].T
    for i in range(cfg.n_layers):
        h, ours = f"h.{i}.", f"layers.{i}."
        qkv, qkv_bias = hf[h + "attn.c_attn.weight"], hf[h + "attn.c_attn.bias"]
        for j, name in enumerate("QKV"):
            columns = qkv[:, j * d_model : (j + 1) * d_model]
            state[ours + f"attn.W_{name}"] = columns.reshape(d_model, n_heads, d_head).permute(1, 0, 2)
            state[ours + f"attn.b_{name}"] = qkv_bias[j * d_model : (j + 1) * d_model].reshape(n_heads, d_head)
        state[ours + "attn.W_O"] = hf[h + "attn.c_proj.weight"].reshape(n_heads, d_head, d_model)
        state[ours + "attn.b_O"] = hf[h + "attn.c_proj.bias"]
        for norm, theirs in (("ln1", "ln_1"), ("ln2", "ln_2")):
            state[ours + f"{norm}.w"] = hf[h + f"{theirs}.weight"]
            state[ours + f"{norm}.b"] = hf[h + f"{theirs}.bias"]
        state[ours + "mlp.W_in"] = hf[h + "mlp.c_fc.weight"]
        state[ours + "mlp.b_in"] = hf[h + "mlp.c_fc.bias"]
        state[ours + "mlp.W_out"] = hf[h + "mlp.c_proj.weight"]
        state[ours + "mlp.b_out"] = hf[h + "mlp.c_proj.bias"]
    return {key: value.contiguous() for key, value in state.items()}


def gpt2_config_of(cfg: ModelConfig) -> dict[str, Any]:
    """GPT-2's config.json for our config; refuses what GPT-2 cannot compute."""
    wanted = {"positional": "learned", "norm": "layernorm", "bias": True, "attn_only": False}
    for field, value in wanted.items():
        if getattr(cfg, field) != value:
            raise InteropError(f"GPT-2 needs {field}={value!r}; this model has {getattr(cfg, field)!r}")
    if cfg.mlp not in SAVED_ACTIVATION:
        raise InteropError(f"GPT-2 needs mlp='gelu' or 'gelu_tanh'; this model has {cfg.mlp!r}")
    if cfg.d_head * cfg.n_heads != cfg.d_model:
        raise InteropError(f"GPT-2 needs d_head * n_heads == d_model; this model has {cfg.d_head} * {cfg.n_heads}")
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": cfg.d_vocab,
        "n_positions": cfg.n_ctx,
        "n_embd": cfg.d_model,
        "n_layer": cfg.n_layers,
        "n_head": cfg.n_heads,
        "n_inner": cfg.d_mlp,
        "activation_function": SAVED_ACTIVATION[cfg.mlp],
        "layer_norm_epsilon": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
    }


def state_to_gpt2(state: Mapping[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """GPT-2's state dict (`GPT2LMHeadModel` names) from ours; the inverse of `gpt2_to_state`."""
    if bool(state["unembed.b_U"].any()):
        raise InteropError("GPT-2 has no unembedding bias, and this model's b_U is not zero")
    n_heads, d_model, d_head = cfg.n_heads, cfg.d_model, cfg.d_head
    hf = {
        "transformer.wte.weight": state["embed.W_E"],
        "transformer.wpe.weight": state["pos_embed.W_pos"],
        "transformer.ln_f.weight": state["ln_final.w"],
        "transformer.ln_f.bias": state["ln_final.b"],
    }
    if not cfg.tie_embeddings:
        hf["lm_head.weight"] = state["unembed.W_U"].T
    for i in range(cfg.n_layers):
        h, ours = f"transformer.h.{i}.", f"layers.{i}."
        hf[h + "attn.c_attn.weight"] = torch.cat(
            [state[ours + f"attn.W_{name}"].permute(1, 0, 2).reshape(d_model, n_heads * d_head) for name in "QKV"], 1
        )
        hf[h + "attn.c_attn.bias"] = torch.cat([state[ours + f"attn.b_{name}"].reshape(-1) for name in "QKV"])
        hf[h + "attn.c_proj.weight"] = state[ours + "attn.W_O"].reshape(d_model, d_model)
        hf[h + "attn.c_proj.bias"] = state[ours + "attn.b_O"]
        for norm, theirs in (("ln1", "ln_1"), ("ln2", "ln_2")):
            hf[h + f"{theirs}.weight"] = state[ours + f"{norm}.w"]
            hf[h + f"{theirs}.bias"] = state[ours + f"{norm}.b"]
        hf[h + "mlp.c_fc.weight"] = state[ours + "mlp.W_in"]
        hf[h + "mlp.c_fc.bias"] = state[ours + "mlp.b_in"]
        hf[h + "mlp.c_proj.weight"] = state[ours + "mlp.W_out"]
        hf[h + "mlp.c_proj.bias"] = state[ours + "mlp.b_out"]
    return {key: value.contiguous() for key, value in hf.items()}
