"""Build a GPT up one piece at a time, on the built-in corpus, and see what each piece buys.

Five stages, each trained from scratch for the same number of steps on the same batches, then
scored on the same held-out windows (validation loss in nats per character, on targets at
positions >= 16, the ones the routed model is scored on too) and asked to continue the same
prompt:

1. bigram: embedding -> unembedding, no position, nothing looks at another position;
2. + attention: one attention-only layer, learned positions;
3. + MLP: one full layer (attention then MLP);
4. + depth: three layers;
5. + routing: three routing steps through a pool of six layers, chosen per sequence by a router
   reading the first 16 characters (docs/routing.md).

The model code is the package's, on the readable path (the exercises' code); the training loop is
written out here, short, instead of the trainer's, so that nothing hides between the stages.
docs/build_up.md shows its output.

    python experiments/build_up.py --steps 600
"""

import argparse
import math
import time

import torch

from transformer.data.corpus import builtin_documents
from transformer.data.tokenizer import train_tokenizer
from transformer.inference.generation import generate
from transformer.model.config import ModelConfig
from transformer.model.decoder import Decoder, DecoderEnds
from transformer.routing.config import RoutingConfig
from transformer.routing.decoder import RoutedDecoder
from transformer.training.lm_loss import lm_loss

PROMPT = "The assert statement"
SCORED_FROM = 16  # the routing prefix: the first target position every stage is scored on
STAGES = ("bigram", "+ attention", "+ MLP", "+ depth", "+ routing")


def make(stage: str, d_vocab: int, n_ctx: int) -> DecoderEnds:
    base = dict(d_vocab=d_vocab, d_model=64, n_heads=4, n_ctx=n_ctx, kernels="readable", positional="learned")
    if stage == "bigram":
        model = Decoder(ModelConfig(**base | dict(n_layers=1, positional="none")))  # type: ignore[arg-type]
        model.layers = torch.nn.ModuleList()  # token -> W_E -> W_U: the next token from this one alone
        return model
    if stage == "+ attention":
        return Decoder(ModelConfig(**base | dict(n_layers=1, attn_only=True)))  # type: ignore[arg-type]
    if stage == "+ MLP":
        return Decoder(ModelConfig(**base | dict(n_layers=1)))  # type: ignore[arg-type]
    if stage == "+ depth":
        return Decoder(ModelConfig(**base | dict(n_layers=3)))  # type: ignore[arg-type]
    routing = RoutingConfig(pool_size=6, route_prefix_len=SCORED_FROM)
    return RoutedDecoder(ModelConfig(**base | dict(n_layers=3)), routing)  # type: ignore[arg-type]


def windows(ids: torch.Tensor, count: int, length: int, generator: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(ids) - length - 1, (count,), generator=generator)
    return torch.stack([ids[s : s + length + 1] for s in starts.tolist()])


def val_loss(model: DecoderEnds, batches: list[torch.Tensor]) -> float:
    model.eval()
    with torch.no_grad():
        losses = [float(lm_loss(model(b[:, :-1]).logits, b[:, 1:], SCORED_FROM)) for b in batches]
    model.train()
    return sum(losses) / len(losses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=600, help="training steps per stage")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--n-ctx", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--sample", type=int, default=80, help="characters to generate after the prompt")
    args = parser.parse_args()
    torch.set_num_threads(1)

    documents = builtin_documents()
    tokenizer = train_tokenizer("char", documents)
    ids = torch.tensor(tokenizer.encode("\n\n".join(documents)))
    split = int(0.9 * len(ids))
    train_ids, held_out = ids[:split], ids[split:]
    val_batches = [windows(held_out, 32, args.n_ctx, torch.Generator().manual_seed(1000 + i)) for i in range(8)]
    d_vocab = tokenizer.vocab_size
    print(f"built-in corpus: {len(ids):,} characters, {d_vocab} symbols; uniform guessing {math.log(d_vocab):.3f} nats")
    print(f"{args.steps} steps per stage, batch {args.batch} x {args.n_ctx}, AdamW lr {args.lr}\n")

    rows = []
    for stage in STAGES:
        torch.manual_seed(0)
        model = make(stage, d_vocab, args.n_ctx)
        optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
        data = torch.Generator().manual_seed(0)  # the same batches for every stage
        started = time.perf_counter()
        for step in range(args.steps):
            model.set_training_step(step, args.steps)
            batch = windows(train_ids, args.batch, args.n_ctx, data)
            with model.counting_window():
                output = model(batch[:, :-1])
            loss = lm_loss(output.logits, batch[:, 1:], model.first_scored_target)
            if output.aux_loss is not None:
                loss = loss + output.aux_loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        seconds = time.perf_counter() - started
        prompt = torch.tensor([tokenizer.encode(PROMPT)])
        sampled = generate(
            model, prompt, args.sample, temperature=0.8, top_k=40, generator=torch.Generator().manual_seed(0)
        )
        text = tokenizer.decode(sampled.tokens[0, prompt.shape[1] :].tolist())
        parameters = sum(p.numel() for p in model.parameters())
        rows.append((stage, parameters, val_loss(model, val_batches), seconds, text))
        print(
            f"{stage:12s} params {parameters:7,d}  val loss {rows[-1][2]:.3f}  ({seconds:.0f} s)  {text!r}", flush=True
        )

    print("\n| stage | parameters | val loss (nats/char) | sample after " + repr(PROMPT) + " |")
    print("|---|---|---|---|")
    for stage, parameters, loss, _, text in rows:
        shown = text.replace("|", "\\|").replace("\n", "⏎")
        print(f"| {stage} | {parameters:,} | {loss:.3f} | `{shown}` |")


if __name__ == "__main__":
    main()
