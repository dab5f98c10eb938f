"""The yardstick for bench/train_speed.py: a nanoGPT-shaped training loop around bench/gpt_baseline.py.

`transformer train` is compared end to end with what users run instead: nanoGPT's `train.py` at
its CPU recipe. This script is that loop, written for the comparison (not nanoGPT's code), on
the same data and vocabulary as the trainer's run (the corpus through the package's character
tokenizer and token cache, so data preparation is the same and outside the timed steps), with
the same model size (`BaselineGPT`: `nn.Linear` layers, `nn.LayerNorm`, SDPA), and each
iteration doing what nanoGPT's does:

- a batch of `batch_size` random windows of `n_ctx + 1` ids, drawn on the host with `torch.randint`;
- the learning rate for the step (linear warm-up, cosine decay) set on every group;
- forward, cross-entropy, backward, `clip_grad_norm_`, `AdamW.step()`, `zero_grad(set_to_none=True)`;
- `loss.item()` every step (nanoGPT reads it each `log_interval`; train_speed.py logs every step);
- AdamW with weight decay on matrices only, betas (0.9, 0.99), fused on CUDA only (nanoGPT's rule);
- float32 on the CPU and bf16 autocast on CUDA (nanoGPT's rule: its CPU recipe is float32).

Each step appends a "train" record to `OUT_DIR/metrics.jsonl` with that step's `tokens_per_s`
(its tokens over its wall time, batch drawing included), the record train_speed.py reads from
the trainer's own log.

Run from the repository root:  python bench/nanogpt_loop.py --out-dir DIR [--max-steps 80] [--data builtin]
"""

import argparse
import contextlib
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from gpt_baseline import BaselineGPT

from transformer.data.sources import sample_documents
from transformer.data.tokenizer import train_tokenizer
from transformer.data.tokens import prepare_corpus


def learning_rate(step: int, args: argparse.Namespace) -> float:
    lr, min_lr, warmup, total = float(args.lr), float(args.min_lr), int(args.warmup_steps), int(args.max_steps)
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--data", default="builtin")
    parser.add_argument("--max-steps", type=int, default=80)
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--min-lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=12)
    parser.add_argument("--n-ctx", type=int, default=64)
    parser.add_argument("--n-layers", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--n-heads", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 0 leaves torch's default")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--seed", type=int, default=1337)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tokenizer = train_tokenizer("char", sample_documents(args.data), None)
    data = prepare_corpus(args.data, tokenizer).train
    torch.manual_seed(args.seed)
    model = BaselineGPT(tokenizer.vocab_size, args.d_model, args.n_heads, args.n_layers, args.n_ctx, 4 * args.d_model)
    model.to(device)
    parameters = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in parameters if p.dim() >= 2], "weight_decay": 0.1},
        {"params": [p for p in parameters if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.99), fused=device.type == "cuda" or None)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    tokens_per_step = args.batch_size * args.n_ctx
    offsets = torch.arange(args.n_ctx + 1)
    ids = torch.from_numpy(np.asarray(data).astype(np.int64))

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(len(ids) - args.n_ctx, (args.batch_size,))
        windows = ids[starts[:, None] + offsets].to(device)
        return windows[:, :-1], windows[:, 1:]

    args.out_dir.mkdir(parents=True, exist_ok=True)
    with (args.out_dir / "metrics.jsonl").open("w") as log:
        print(f"baseline GPT, {sum(p.numel() for p in parameters):,} parameters; vocabulary {tokenizer.vocab_size}")
        inputs, targets = batch()
        for step in range(args.max_steps):
            started = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, args)
            with autocast:
                logits = model(inputs)
                loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
            inputs, targets = batch()  # the next batch, drawn while a GPU would be busy
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_value = loss.item()
            elapsed = time.perf_counter() - started
            record = {"kind": "train", "step": step + 1, "loss": loss_value, "tokens_per_s": tokens_per_step / elapsed}
            log.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
