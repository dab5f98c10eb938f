"""A conventional `nn.Linear` GPT, the yardstick for bench/throughput.py.

This is the shape most PyTorch GPTs have (minGPT, nanoGPT): `nn.Embedding` for tokens and
positions, pre-norm blocks of `nn.LayerNorm`, one fused `nn.Linear` producing q, k and v,
`F.scaled_dot_product_attention` with a causal mask, an output projection, a
Linear-GELU-Linear MLP, a final `nn.LayerNorm` and an untied `lm_head`. Biases everywhere,
exact (erf) GELU and no dropout, so it computes the same family of functions as
`transformer.Decoder` with `ModelConfig(bias=True, tie_embeddings=False, dropout=0.0)` and has
exactly as many parameters. It exists only to be timed against; the package itself never
uses `nn.Linear`.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class BaselineBlock(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_mlp: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.ln_1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln_2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, d_mlp)
        self.fc_out = nn.Linear(d_mlp, d_model)

    def attend(self, x: Tensor) -> Tensor:
        batch, pos, d_model = x.shape
        q, k, v = self.qkv(x).split(d_model, dim=-1)
        # [batch, pos, d_model] -> [batch, n_heads, pos, d_head]
        q, k, v = (t.view(batch, pos, self.n_heads, -1).transpose(1, 2) for t in (q, k, v))
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        out: Tensor = self.proj(z.transpose(1, 2).reshape(batch, pos, d_model))
        return out

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attend(self.ln_1(x))
        mlp_out: Tensor = self.fc_out(F.gelu(self.fc(self.ln_2(x))))
        return x + mlp_out


class BaselineGPT(nn.Module):
    def __init__(self, d_vocab: int, d_model: int, n_heads: int, n_layers: int, n_ctx: int, d_mlp: int) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(d_vocab, d_model)
        self.pos_emb = nn.Embedding(n_ctx, d_model)
        self.blocks = nn.ModuleList(BaselineBlock(d_model, n_heads, d_mlp) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, d_vocab)
        # GPT-2's init, as the Decoder uses: N(0, 0.02) weights, zero biases. (Initial values
        # do not change the step time; this only keeps the two models' losses comparable.)
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, tokens: Tensor) -> Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.tok_emb(tokens) + self.pos_emb(positions)
        for block in self.blocks:
            x = block(x)
        logits: Tensor = self.lm_head(self.ln_f(x))
        return logits
