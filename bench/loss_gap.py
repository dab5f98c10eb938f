"""The val-loss gap against nanoGPT: does the char tokenizer's 322-id vocabulary cost loss?

Trains the package's `Decoder` (fast path) with `transformer train`'s optimizer, schedule and
clipping at nanoGPT's CPU recipe (4 x 128, 4 heads, block 64, batch 12, lr 1e-3 -> 1e-4, warmup
100, beta2 0.99, weight decay 0.1, clip 1.0, dropout 0, seed 1337) on nanoGPT's split of a text
file (first 90% train, last 10% val), with one vocabulary:

- v65:  nanoGPT's ids (the text's sorted characters);
- v322: our char tokenizer's ids (256 byte ids, end-of-text, then the characters).

The training windows are the same in both. Prints one JSON line: the loss over the whole val
split (every non-overlapping window), nanoGPT's estimate (the mean of 20 random val batches)
drawn 10 times (its spread is the estimate's noise), and, for v322, the probability the model
puts on ids the text never contains. bench/README.md has the figures.

Run from the repository root:  python bench/loss_gap.py ../shared/data/tinyshakespeare.txt v322
"""

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from transformer.data.tokenizer import train_tokenizer
from transformer.model.config import ModelConfig
from transformer.model.decoder import Decoder
from transformer.training.config import TrainSettings
from transformer.training.optim import learning_rate, make_optimizer

BLOCK, BATCH = 64, 12


def ids_of(text: str, variant: str) -> tuple[np.ndarray, int]:
    if variant == "v65":
        index = {c: i for i, c in enumerate(sorted(set(text)))}
        return np.array([index[c] for c in text], dtype=np.int64), len(index)
    tokenizer = train_tokenizer("char", [text])
    return np.asarray(tokenizer.encode(text), dtype=np.int64), tokenizer.vocab_size


def windows(split: np.ndarray, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    starts = torch.randint(0, len(split) - BLOCK, (BATCH,), generator=generator).numpy()
    window = torch.as_tensor(split[starts[:, None] + np.arange(BLOCK + 1)[None]])
    return window[:, :-1], window[:, 1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("text")
    parser.add_argument("variant", choices=("v65", "v322"))
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ids, vocab = ids_of(open(args.text, encoding="utf-8").read(), args.variant)
    cut = int(0.9 * len(ids))
    train, val = ids[:cut], ids[cut:]
    settings = TrainSettings(max_steps=args.steps, lr=1e-3, min_lr=1e-4, warmup_steps=100, beta2=0.99)
    torch.manual_seed(1337)
    model = Decoder(ModelConfig(d_vocab=vocab, d_model=128, n_heads=4, n_layers=4, n_ctx=BLOCK, dropout=0.0))
    optimizer = make_optimizer(model, settings)
    generator = torch.Generator().manual_seed(1337)
    started = time.perf_counter()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, settings)
        x, y = windows(train, generator)
        F.cross_entropy(model(x).logits.flatten(0, 1), y.flatten()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        starts = np.arange(0, len(val) - BLOCK - 1, BLOCK)
        total = 0.0
        for i in range(0, len(starts), 64):
            window = torch.as_tensor(val[starts[i : i + 64, None] + np.arange(BLOCK + 1)[None]])
            logits = model(window[:, :-1]).logits
            total += float(F.cross_entropy(logits.flatten(0, 1), window[:, 1:].flatten(), reduction="sum"))
        full_val = total / (len(starts) * BLOCK)
        estimates = []
        for seed in range(10):
            draw = torch.Generator().manual_seed(seed)
            losses = [
                F.cross_entropy(model(x).logits.flatten(0, 1), y.flatten())
                for x, y in (windows(val, draw) for _ in range(20))
            ]
            estimates.append(float(torch.stack(losses).mean()))
        unused = None
        if args.variant == "v322":
            never = torch.ones(vocab, dtype=torch.bool)
            never[np.unique(ids)] = False
            unused = float(
                model(windows(val, torch.Generator().manual_seed(0))[0]).logits.softmax(-1)[..., never].sum(-1).mean()
            )
    print(
        json.dumps(
            {
                "variant": args.variant,
                "vocab": vocab,
                "full_val": full_val,
                "estimate_mean": float(np.mean(estimates)),
                "estimate_sd": float(np.std(estimates)),
                "estimate_min": min(estimates),
                "estimate_max": max(estimates),
                "unused_probability": unused,
                "seconds": round(time.perf_counter() - started),
            }
        )
    )


if __name__ == "__main__":
    main()
