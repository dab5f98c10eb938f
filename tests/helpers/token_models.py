"""Small seeded token-routed decoders, and the slow, obviously correct reference they must equal.

`reference_forward` is the token-routed decoder written as loops over tokens: for each step,
each sequence and each position, the token's own router choice, a capacity counted by hand,
and (if admitted) its own layer's norm, projections, attention over the earlier tokens it may
see, W_O and MLP, one vector at a time. No sorting, no masks, no batching.
"""

import math

import torch
from torch import Tensor

from tests.helpers.routed_models import tiny_config
from transformer.model.config import ModelConfig
from transformer.model.decoder import Decoder
from transformer.model.layer import TransformerLayer
from transformer.routing.config import RoutingConfig
from transformer.routing.token_decoder import TokenRoutedDecoder


def token_routing(**overrides: object) -> RoutingConfig:
    values: dict[str, object] = dict(granularity="token", pool_size=3)
    values.update(overrides)
    return RoutingConfig(**values)  # type: ignore[arg-type]


def token_model(
    cfg: ModelConfig | None = None, seed: int = 0, prime: float = 3.0, **routing: object
) -> TokenRoutedDecoder:
    """A token-routed decoder whose router already has opinions (`prime`: the readout's scale;
    the zero-initialised one would send every token to the same entry)."""
    torch.manual_seed(seed)
    model = TokenRoutedDecoder(cfg if cfg is not None else tiny_config(), token_routing(**routing))
    if prime:
        with torch.no_grad():
            model.router.W_R.normal_(0.0, prime, generator=torch.Generator().manual_seed(seed + 1))
    return model


def token_copy_of(plain: Decoder, routing: RoutingConfig) -> TokenRoutedDecoder:
    """A token-routed decoder whose embedding, norm, unembedding and pool layers are the plain one's."""
    routed = TokenRoutedDecoder(plain.cfg, routing)
    shared = {k: v for k, v in plain.state_dict().items() if not k.startswith("layers.")}
    missing, unexpected = routed.load_state_dict(shared, strict=False)
    assert not unexpected and all(k.startswith(("pool.", "router.", "work")) for k in missing)
    for index, layer in enumerate(plain.layers):
        routed.pool.layers[index].load_state_dict(layer.state_dict())
    return routed


def in_order_route(batch: int, pos: int, steps: int) -> Tensor:
    """Every token to layer k at step k."""
    return torch.arange(steps).expand(batch, pos, steps).clone()


def reference_admit(choice: Tensor, n_layers: int, n_entries: int, capacity_factor: float | None) -> Tensor:
    """Capacity by hand: walk each sequence, count what each entry took, admit while it fits."""
    admitted = torch.zeros(choice.shape, dtype=torch.bool)
    for b in range(choice.shape[0]):
        taken = [0] * n_entries
        for t in range(choice.shape[1]):
            entry = int(choice[b, t])
            room = math.ceil(capacity_factor * (t + 1) / n_entries) if capacity_factor is not None else t + 1
            if entry < n_layers and taken[entry] < room:
                taken[entry] += 1
                admitted[b, t] = True
    return admitted


def _queries_keys_values(layer: TransformerLayer, x: Tensor, position: int) -> tuple[Tensor, Tensor, Tensor]:
    """One token's q, k, v ([n_heads, d_head] each) by `layer`, rotated at its own position."""
    attn, h = layer.attn, layer.ln1(x)
    out = []
    for W, b in ((attn.W_Q, attn.b_Q), (attn.W_K, attn.b_K), (attn.W_V, attn.b_V)):
        projected = torch.einsum("d,hde->he", h, W) + (b if b is not None else 0.0)
        out.append(projected)
    q, k, v = out
    if attn.rotary is not None:
        q = attn.rotary(q[:, None], position)[:, 0]
        k = attn.rotary(k[:, None], position)[:, 0]
    return q, k, v


def reference_forward(model: TokenRoutedDecoder, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Logits, choices [batch, pos, steps] and admitted [batch, pos, steps], token by token
    (evaluation mode: argmax choices)."""
    routing, layers = model.routing, list(model.pool.layers)
    co_routed = routing.token_attention == "co_routed"
    resid = model.embed_tokens(tokens)
    batch, pos, _ = resid.shape
    all_choices, all_admitted = [], []
    for step in range(model.n_steps):
        choice = model.router(resid, step).argmax(-1)
        admitted = reference_admit(choice, routing.pool_size, routing.n_entries, routing.capacity_factor)
        after = resid.clone()
        for b in range(batch):
            qkv = {
                t: _queries_keys_values(layers[int(choice[b, t])], resid[b, t], t)  # type: ignore[arg-type]
                for t in range(pos)
                if admitted[b, t]
            }
            for t in qkv:
                layer: TransformerLayer = layers[int(choice[b, t])]  # type: ignore[assignment]
                attn, q = layer.attn, qkv[t][0]
                seen = [j for j in qkv if j <= t and (not co_routed or choice[b, j] == choice[b, t])]
                heads = []
                for h in range(q.shape[0]):
                    scores = torch.stack([q[h] @ qkv[j][1][h] * attn.scale for j in seen])
                    if attn.alibi is not None:
                        scores = scores - attn.alibi.slopes[h] * torch.tensor([float(t - j) for j in seen])
                    pattern = scores.softmax(0)
                    heads.append(sum(p * qkv[j][2][h] for p, j in zip(pattern, seen, strict=True)))
                attn_out = sum(heads[h] @ attn.W_O[h] for h in range(len(heads)))
                x = resid[b, t] + attn_out + (attn.b_O if attn.b_O is not None else 0.0)
                if layer.mlp is not None and layer.ln2 is not None:
                    x = x + layer.mlp(layer.ln2(x)[None, None])[0, 0]
                after[b, t] = x
        resid = after
        all_choices.append(choice)
        all_admitted.append(admitted)
    return model.logits(resid), torch.stack(all_choices, -1), torch.stack(all_admitted, -1)
