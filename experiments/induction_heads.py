"""Find the induction heads of a 2-layer attention-only model, step by step (docs/interpretability.md).

Train: sequences of distinct random tokens, repeated once, the half length drawn from 6..12 per
batch (so "look L - 1 back" is no solution). The first half is unpredictable (best loss ln V);
in the repeat every next token is the one that followed the current token's earlier copy. The
task, model and training are those of the learning test
tests/model/test_attention.py::test_two_layers_form_an_induction_head_one_layer_cannot (seed 0),
whose trained model has a layer-1 head with induction score >= 0.9. With --max-prefix P, up to P
random tokens come first (a random number per batch), so the repeat starts anywhere.

Then, with transformer/analysis/interp/: attention patterns on one sequence, previous-token and
induction scores per head (trained and at initialisation), the loss on the repeat with each head
ablated (zero and mean), direct logit attribution of the correct token per head, the induction
head's full OV circuit and its copying score, and the K-composition of every layer-1 head with
every layer-0 head (and the Q- and V-composition). Figures go to --figures, numbers to --out (JSON) and stdout.

    python experiments/induction_heads.py          # the chapter's run (1000 steps, ~1 minute)
"""

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from transformer.analysis.interp.attribution import direct_logit_attribution
from transformer.analysis.interp.circuits import composition_score, copying_score, full_ov_circuit
from transformer.analysis.interp.figures import plot_head_scores, plot_matrix, plot_patterns
from transformer.analysis.interp.heads import (
    ablate_head,
    induction_scores,
    previous_token_scores,
    repeated_distinct_tokens,
)
from transformer.analysis.interp.hooks import run_with_cache
from transformer.model.config import ModelConfig
from transformer.model.decoder import Decoder

# As in the learning test: HALF is the held-out half length every analysis uses.
VOCAB, SHORTEST, LONGEST, HALF = 32, 6, 12, 9


def repeated_distinct(generator: torch.Generator, batch: int, half: int, prefix: int = 0) -> Tensor:
    """[batch, prefix + 2 * half]: `prefix` random tokens, then `half` distinct tokens twice
    (no token of the repeat is ambiguous)."""
    tokens = repeated_distinct_tokens(generator, batch, half, VOCAB)
    if not prefix:
        return tokens
    noise = torch.randint(0, VOCAB, (batch, prefix), generator=generator)
    return torch.cat((noise, tokens), dim=1)


def token_losses(logits: Tensor, tokens: Tensor) -> Tensor:
    """[batch, pos - 1]: the loss of predicting tokens[:, t + 1] at t."""
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")


def repeat_loss(logits: Tensor, tokens: Tensor) -> float:
    """Mean loss on the repeat, its first token excluded (nothing announces where it starts)."""
    return float(token_losses(logits, tokens)[:, HALF:].mean())


def build(n_layers: int, seed: int, max_prefix: int) -> Decoder:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        d_vocab=VOCAB,
        d_model=32,
        n_heads=2,
        n_layers=n_layers,
        n_ctx=max_prefix + 2 * LONGEST,
        attn_only=True,
        positional="learned",
        kernels="readable",
    )
    return Decoder(cfg)


def train(model: Decoder, steps: int, seed: int, max_prefix: int) -> None:
    generator = torch.Generator().manual_seed(seed + 1)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(steps):
        half = int(torch.randint(SHORTEST, LONGEST + 1, (), generator=generator))
        prefix = int(torch.randint(0, max_prefix + 1, (), generator=generator)) if max_prefix else 0
        tokens = repeated_distinct(generator, 64, half, prefix)
        loss = token_losses(model(tokens).logits, tokens)[:, prefix:].mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()


def analyse(model: Decoder, figures: Path) -> dict[str, Any]:
    held_out = repeated_distinct(torch.Generator().manual_seed(99), 256, HALF)
    reference = repeated_distinct(torch.Generator().manual_seed(98), 256, HALF)
    logits, cache = run_with_cache(model, held_out)
    losses = token_losses(logits, held_out)
    result: dict[str, Any] = {
        "loss_first_half": float(losses[:, : HALF - 1].mean()),
        "loss_repeat": float(losses[:, HALF:].mean()),
        "ln_vocab": math.log(VOCAB),
    }
    previous, induction = previous_token_scores(cache), induction_scores(cache, HALF)
    result["previous_token_scores"], result["induction_scores"] = previous.tolist(), induction.tolist()
    plot_head_scores({"previous-token score": previous, "induction score": induction}, figures / "induction-scores.png")
    # Where each head looks on the first sequence: the key position with the most attention, per query.
    result["argmax_key_first_sequence"] = {
        f"L{layer}H{head}": cache[f"blocks.{layer}.attn.hook_pattern"][0, head].argmax(-1).tolist()
        for layer in range(model.cfg.n_layers)
        for head in range(model.cfg.n_heads)
    }
    labels = [str(t) for t in held_out[0].tolist()]
    for layer in range(model.cfg.n_layers):
        title = f"layer {layer}: attention on one repeated sequence (half {HALF})"
        plot_patterns(
            cache[f"blocks.{layer}.attn.hook_pattern"][0], title, figures / f"induction-layer{layer}.png", labels
        )

    # Ablation: the loss on the repeat without each head in turn.
    _, reference_cache = run_with_cache(model, reference)
    ablations: dict[str, dict[str, float]] = {}
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            name = f"L{layer}H{head}"
            ablations[name] = {}
            for how in ("zero", "mean"):
                hook = ablate_head(head, how, reference_cache[f"blocks.{layer}.attn.hook_z"])
                ablated, _ = run_with_cache(
                    model, held_out, names=lambda _: False, hooks={f"blocks.{layer}.attn.hook_z": hook}
                )
                ablations[name][how] = repeat_loss(ablated, held_out)
    result["repeat_loss_with_head_ablated"] = ablations

    # Direct logit attribution of the correct next token, on the repeat.
    targets = torch.cat((held_out[:, 1:], held_out[:, :1]), dim=1)  # position t predicts t + 1
    attribution = direct_logit_attribution(model, cache, targets)
    repeat = slice(HALF, 2 * HALF - 1)
    result["dla_correct_token_on_repeat"] = {
        label: float(attribution.terms[i][:, repeat].mean()) for i, label in enumerate(attribution.labels)
    }
    result["dla_constant"] = float(attribution.constant[:, repeat].mean())

    # Circuits: the induction head (layer 1's best induction score), and what it moves.
    dla = result["dla_correct_token_on_repeat"]
    result["answer_head"] = max((f"L1H{head}" for head in range(model.cfg.n_heads)), key=lambda name: dla[name])
    induction_head = int(induction[1].argmax())
    result["induction_head"] = f"L1H{induction_head}"
    result["previous_token_head"] = f"L0H{int(previous[0].argmax())}"
    ov = full_ov_circuit(model, 1, induction_head)
    result["copying_score_induction_head"] = copying_score(ov)
    result["copying_score_all_heads"] = {
        f"L{layer}H{head}": copying_score(full_ov_circuit(model, layer, head))
        for layer in range(model.cfg.n_layers)
        for head in range(model.cfg.n_heads)
    }
    plot_matrix(
        ov,
        f"full OV circuit of L1H{induction_head}",
        "logit of token",
        "attended token",
        figures / "induction-ov.png",
    )
    for kind in ("q", "k", "v"):
        result[f"{kind}_composition"] = {
            f"L1H{late}<-L0H{early}": composition_score(model, (0, early), (1, late), kind)
            for late in range(model.cfg.n_heads)
            for early in range(model.cfg.n_heads)
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-prefix", type=int, default=0, help="up to this many random tokens before the repeat (default 0)"
    )
    parser.add_argument("--figures", type=Path, default=Path("docs/results"))
    parser.add_argument("--out", type=Path, default=Path("experiments/results/induction_heads.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    start = time.perf_counter()
    untrained = build(2, args.seed, args.max_prefix)
    _, cache = run_with_cache(untrained, repeated_distinct(torch.Generator().manual_seed(99), 256, HALF))
    report: dict[str, Any] = {
        "steps": args.steps,
        "seed": args.seed,
        "max_prefix": args.max_prefix,
        "untrained_induction_scores": induction_scores(cache, HALF).tolist(),
        "untrained_previous_token_scores": previous_token_scores(cache).tolist(),
    }
    model = build(2, args.seed, args.max_prefix)
    train(model, args.steps, args.seed, args.max_prefix)
    report.update(analyse(model, args.figures))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")  # the control below takes as long again
    one_layer = build(1, args.seed, args.max_prefix)
    train(one_layer, args.steps, args.seed, args.max_prefix)
    held_out = repeated_distinct(torch.Generator().manual_seed(99), 256, HALF)
    with torch.no_grad():
        report["one_layer_loss_repeat"] = repeat_loss(one_layer(held_out).logits, held_out)
    report["seconds"] = round(time.perf_counter() - start, 1)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
