"""`transformer demo`: train a tiny character-level decoder on the built-in corpus in a minute.

A first run that shows the whole loop (data, model, loss going down, a sample) on any
laptop, offline. `transformer train` is the full training command.
"""

import math
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from transformer.builtin_corpus import builtin_text
from transformer.config import ModelConfig
from transformer.decoder import Decoder


def run_demo(steps: int = 300, seed: int = 0, batch: int = 16, context: int = 64) -> float:
    """Returns the final training loss (nats/char)."""
    torch.manual_seed(seed)
    text = builtin_text()
    alphabet = sorted(set(text))
    index = {ch: i for i, ch in enumerate(alphabet)}
    data = torch.tensor([index[ch] for ch in text], dtype=torch.long)
    cfg = ModelConfig(d_vocab=len(alphabet), d_model=64, n_heads=4, n_layers=2, n_ctx=context)
    model = Decoder(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"built-in corpus: {len(text):,} characters, {len(alphabet)} distinct; "
          f"model: {n_params:,} parameters; uniform guess loss ln({len(alphabet)}) = "
          f"{math.log(len(alphabet)):.3f}")
    start, loss_value = time.perf_counter(), float("nan")
    progress = tqdm(range(steps), desc="demo", disable=None)
    for step in progress:
        starts = torch.randint(0, len(data) - context - 1, (batch,))
        window = torch.stack([data[s : s + context + 1] for s in starts.tolist()])
        logits = model(window[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), window[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_value = loss.item()
        progress.set_postfix(loss=f"{loss_value:.3f}")
        if step % 50 == 0 or step == steps - 1:
            tqdm.write(f"step {step:4d}  loss {loss_value:.3f}")
    print(f"trained {steps} steps in {time.perf_counter() - start:.1f}s; final loss {loss_value:.3f}")
    print("sample:", repr(_sample(model, data[:8], alphabet, 120)))
    return loss_value


@torch.no_grad()
def _sample(model: Decoder, prompt: torch.Tensor, alphabet: list[str], n_new: int) -> str:
    model.eval()
    tokens = prompt[None, :]
    generator = torch.Generator().manual_seed(0)
    for _ in range(n_new):
        logits = model(tokens[:, -model.cfg.n_ctx :])[:, -1]
        next_token = torch.multinomial(logits.softmax(-1), 1, generator=generator)
        tokens = torch.cat([tokens, next_token], dim=1)
    return "".join(alphabet[i] for i in tokens[0].tolist())
