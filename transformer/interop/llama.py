"""Llama (Hugging Face `LlamaForCausalLM`) <-> `Decoder`: RMSNorm, rotary, SwiGLU, no biases.

Three differences of storage, none of function:
- `nn.Linear` keeps weights as [out, in] and computes x @ W^T: every matrix is transposed.
- Hugging Face's rotary pairs dimension i of a head with i + d_head/2 ("rotate_half"); ours
  pairs 2i with 2i + 1. Both turn pair i by the same angle p * base^(-2i/d_head), so moving
  Hugging Face's dimension i to our 2i and i + d_head/2 to our 2i + 1, in the query and the key
  projections alike, gives the same rotated vectors up to that permutation, and a dot product
  does not see a permutation applied to both sides: the scores are equal. Values are not rotated
  and keep their order.
- Grouped-query attention (num_key_value_heads < num_attention_heads) shares each key/value
  head among a group of query heads. Our attention has one key/value head per query head, so
  loading copies each shared head into every head of its group: the same function, more
  memory. Saving finds the groups again (the fewest key/value heads whose copies are equal).
Rotary scaling variants (rope_type other than "default", e.g. Llama 3.1's) are refused.
"""

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from transformer.interop.errors import InteropError
from transformer.model.config import ModelConfig


def rope_theta(hf: Mapping[str, Any]) -> float:
    """The rotary base, from `rope_parameters` (transformers 5) or `rope_theta`/`rope_scaling` (older)."""
    parameters = dict(hf.get("rope_parameters") or {})
    scaling = dict(hf.get("rope_scaling") or {})
    kind = parameters.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if kind != "default":
        raise InteropError(f"Llama rope_type={kind!r} is not supported: only the default rotary embedding is")
    return float(parameters.get("rope_theta", hf.get("rope_theta", 10_000.0)))


def llama_model_config(hf: Mapping[str, Any], kernels: str = "fast", n_ctx: int | None = None) -> ModelConfig:
    """Our config for a Llama config.json. `n_ctx`: a shorter context than
    max_position_embeddings, to keep the rotary table small."""
    if hf.get("hidden_act", "silu") != "silu":
        raise InteropError(f"Llama hidden_act={hf['hidden_act']!r} is not supported: the SwiGLU MLP uses silu")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key, False):
            raise InteropError(f"Llama {key}=true is not supported: this conversion is for bias-free models")
    n_heads = int(hf["num_attention_heads"])
    n_kv = int(hf.get("num_key_value_heads") or n_heads)
    if n_heads % n_kv:
        raise InteropError(f"num_attention_heads={n_heads} is not a multiple of num_key_value_heads={n_kv}")
    d_model = int(hf["hidden_size"])
    d_head = int(hf.get("head_dim") or d_model // n_heads)
    return ModelConfig(
        d_vocab=int(hf["vocab_size"]),
        d_model=d_model,
        n_heads=n_heads,
        n_layers=int(hf["num_hidden_layers"]),
        n_ctx=n_ctx or int(hf["max_position_embeddings"]),
        d_head=d_head,
        d_mlp=int(hf["intermediate_size"]),
        positional="rotary",
        rotary_dim=d_head,
        rope_base=rope_theta(hf),
        norm="rmsnorm",
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        mlp="swiglu",
        bias=False,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        kernels=kernels,
    )


def rotate_half_to_pairs(d_head: int) -> Tensor:
    """Index j of ours takes Hugging Face's dimension order[j]: (0, d/2, 1, d/2 + 1, ...)."""
    half = torch.arange(d_head // 2)
    return torch.stack((half, half + d_head // 2), dim=-1).flatten()


def llama_to_state(hf_state: Mapping[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """Our state dict from `LlamaForCausalLM`'s (`model.` prefixed or not)."""
    hf = {key.removeprefix("model."): value for key, value in hf_state.items()}
    n_heads, d_model, d_head = cfg.n_heads, cfg.d_model, cfg.d_head
    order = rotate_half_to_pairs(d_head)
    assert cfg.d_vocab is not None
    state = {
        "embed.W_E": hf["embed_tokens.weight"],
        "ln_final.w": hf["norm.weight"],
        "unembed.b_U": torch.zeros(cfg.d_vocab, dtype=hf["embed_tokens.weight"].dtype),
    }
    if not cfg.tie_embeddings:
        state["unembed.W_U"] = hf["lm_head.weight"].T

    def heads(weight: Tensor, rotated: bool) -> Tensor:
        """[heads * d_head, d_model] (out, in) -> [n_heads, d_model, d_head], each shared
        key/value head repeated over its group of query heads."""
        per_head = weight.T.reshape(d_model, -1, d_head).permute(1, 0, 2)
        if rotated:
            per_head = per_head[..., order]
        return per_head.repeat_interleave(n_heads // per_head.shape[0], dim=0)

    for i in range(cfg.n_layers):
        theirs, ours = f"layers.{i}.", f"layers.{i}."
        state[ours + "attn.W_Q"] = heads(hf[theirs + "self_attn.q_proj.weight"], rotated=True)
        state[ours + "attn.W_K"] = heads(hf[theirs + "self_attn.k_proj.weight"], rotated=True)
        state[ours + "attn.W_V"] = heads(hf[theirs + "self_attn.v_proj.weight"], rotated=False)
        state[ours + "attn.W_O"] = hf[theirs + "self_attn.o_proj.weight"].T.reshape(n_heads, d_head, d_model)
        state[ours + "ln1.w"] = hf[theirs + "input_layernorm.weight"]
        state[ours + "ln2.w"] = hf[theirs + "post_attention_layernorm.weight"]
        state[ours + "mlp.W_gate"] = hf[theirs + "mlp.gate_proj.weight"].T
        state[ours + "mlp.W_in"] = hf[theirs + "mlp.up_proj.weight"].T
        state[ours + "mlp.W_out"] = hf[theirs + "mlp.down_proj.weight"].T
    return {key: value.contiguous() for key, value in state.items()}


def shared_kv_heads(state: Mapping[str, Tensor], cfg: ModelConfig) -> int:
    """The fewest key/value heads that reproduce every layer's W_K and W_V by repetition."""
    for n_kv in (n for n in range(1, cfg.n_heads + 1) if cfg.n_heads % n == 0):
        group = cfg.n_heads // n_kv
        if all(
            torch.equal(W, W[::group].repeat_interleave(group, dim=0))
            for i in range(cfg.n_layers)
            for W in (state[f"layers.{i}.attn.W_K"], state[f"layers.{i}.attn.W_V"])
        ):
            return n_kv
    return cfg.n_heads


def llama_config_of(cfg: ModelConfig, n_kv_heads: int) -> dict[str, Any]:
    wanted = {"positional": "rotary", "norm": "rmsnorm", "mlp": "swiglu", "bias": False, "attn_only": False}
    for field, value in wanted.items():
        if getattr(cfg, field) != value:
            raise InteropError(f"Llama needs {field}={value!r}; this model has {getattr(cfg, field)!r}")
    if cfg.rotary_dim != cfg.d_head:
        raise InteropError(f"Llama rotates all of d_head={cfg.d_head}; this model rotates {cfg.rotary_dim}")
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": cfg.d_vocab,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_mlp,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": n_kv_heads,
        "head_dim": cfg.d_head,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.n_ctx,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_base,
        "rope_parameters": {"rope_theta": cfg.rope_base, "rope_type": "default"},
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": cfg.tie_embeddings,
    }


def state_to_llama(state: Mapping[str, Tensor], cfg: ModelConfig, n_kv_heads: int) -> dict[str, Tensor]:
    """`LlamaForCausalLM`'s state dict from ours, with `n_kv_heads` key/value heads (see
    `shared_kv_heads`); the inverse of `llama_to_state`."""
    if bool(state["unembed.b_U"].any()):
        raise InteropError("Llama has no unembedding bias, and this model's b_U is not zero")
    d_model, d_head = cfg.d_model, cfg.d_head
    back = torch.argsort(rotate_half_to_pairs(d_head))
    group = cfg.n_heads // n_kv_heads
    hf = {"model.embed_tokens.weight": state["embed.W_E"], "model.norm.weight": state["ln_final.w"]}
    if not cfg.tie_embeddings:
        hf["lm_head.weight"] = state["unembed.W_U"].T

    def linear(per_head: Tensor, rotated: bool, shared: bool) -> Tensor:
        if shared:
            per_head = per_head[::group]
        if rotated:
            per_head = per_head[..., back]
        return per_head.permute(1, 0, 2).reshape(d_model, -1).T

    for i in range(cfg.n_layers):
        theirs, ours = f"model.layers.{i}.", f"layers.{i}."
        hf[theirs + "self_attn.q_proj.weight"] = linear(state[ours + "attn.W_Q"], rotated=True, shared=False)
        hf[theirs + "self_attn.k_proj.weight"] = linear(state[ours + "attn.W_K"], rotated=True, shared=True)
        hf[theirs + "self_attn.v_proj.weight"] = linear(state[ours + "attn.W_V"], rotated=False, shared=True)
        hf[theirs + "self_attn.o_proj.weight"] = state[ours + "attn.W_O"].reshape(-1, d_model).T
        hf[theirs + "input_layernorm.weight"] = state[ours + "ln1.w"]
        hf[theirs + "post_attention_layernorm.weight"] = state[ours + "ln2.w"]
        hf[theirs + "mlp.gate_proj.weight"] = state[ours + "mlp.W_gate"].T
        hf[theirs + "mlp.up_proj.weight"] = state[ours + "mlp.W_in"].T
        hf[theirs + "mlp.down_proj.weight"] = state[ours + "mlp.W_out"].T
    return {key: value.contiguous() for key, value in hf.items()}
