"""What a checkpoint does with one prompt, as plain data for the dashboard's prompt panel:
its continuation, its attention patterns (plain decoders) and its routes (routed decoders).

Attention patterns come from the readable attention's own `Attention.pattern`, recorded while
the prompt runs through the readable path (the fast path is switched off for that one forward
pass and restored after), so what is drawn is what the model mixes values with, not a
recomputation of it.
"""

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from transformer.analysis.token_routes import shown_token, token_choices
from transformer.errors import UserError
from transformer.inference.generation import check_prompt, generate
from transformer.inference.loading import TrainedRun
from transformer.model.attention import Attention
from transformer.model.decoder import Decoder
from transformer.routing.decoder import as_routed
from transformer.routing.token_decoder import TokenRoutedDecoder


class PromptViewError(UserError):
    """A view the run's kind of decoder does not have; one line that says which it has."""


def prompt_ids(run: TrainedRun, prompt: str) -> Tensor:
    """The prompt as one row of ids, cropped to the model's context; one-line errors when it is
    too short for the model (a routed model needs its routing prefix)."""
    ids = run.tokenizer.encode(prompt)[-run.model.cfg.n_ctx :]
    check_prompt(run.model, len(ids))
    return torch.tensor([ids], dtype=torch.long)


@contextmanager
def _recording(attentions: Sequence[Attention], into: list[Tensor]) -> Iterator[None]:
    """Runs every attention through its readable path, keeping each `pattern` it computes."""
    saved = [(attn.fast, attn.__dict__.get("pattern")) for attn in attentions]

    def recorder(original: Callable[..., Tensor]) -> Callable[..., Tensor]:
        def record(*args: Any) -> Tensor:
            pattern = original(*args)
            into.append(pattern.detach())
            return pattern

        return record

    for attn in attentions:
        attn.fast = False
        attn.pattern = recorder(attn.pattern)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for attn, (fast, own) in zip(attentions, saved, strict=True):
            attn.fast = fast
            del attn.pattern
            if own is not None:
                attn.pattern = own  # type: ignore[method-assign]


def attentions(model: Decoder) -> list[Attention]:
    """The attention block of each layer, in order."""
    found = [module for module in model.modules() if isinstance(module, Attention)]
    if len(found) != model.cfg.n_layers:
        raise PromptViewError(f"found {len(found)} attention blocks in a decoder of {model.cfg.n_layers} layers")
    return found


@dataclass
class AttentionView:
    tokens: list[str]  # one visible character per position (`token_routes.shown_token`)
    patterns: np.ndarray[Any, np.dtype[np.float64]]  # [layer, head, query, key]; rows sum to 1


@torch.no_grad()
def attention_view(run: TrainedRun, prompt: str) -> AttentionView:
    """The attention probabilities of every layer and head of a plain decoder on the prompt."""
    model = run.model
    if not isinstance(model, Decoder):
        raise PromptViewError(f"attention patterns are drawn for plain decoders; this run is {model.kind}")
    ids = prompt_ids(run, prompt)
    patterns: list[Tensor] = []
    with _recording(attentions(model), patterns):
        model(ids)
    stacked = torch.stack([p[0] for p in patterns]).double().numpy()
    return AttentionView([shown_token(i, run.tokenizer) for i in ids[0].tolist()], stacked)


@dataclass
class RouteView:
    """The entries a prompt's tokens (token-routed) or the whole prompt (sequence-routed) took:
    `choices[k, t]` for step k at position t; a sequence-routed run's choice is one per step,
    repeated along t. `entries` names each entry (pool layers, then "skip")."""

    tokens: list[str]
    choices: np.ndarray[Any, np.dtype[np.int64]]  # [step, position]
    entries: list[str]


@torch.no_grad()
def route_view(run: TrainedRun, prompt: str) -> RouteView:
    model = run.model
    ids = prompt_ids(run, prompt)
    shown = [shown_token(i, run.tokenizer) for i in ids[0].tolist()]
    if isinstance(model, TokenRoutedDecoder):
        choices, _ = token_choices(model, ids)
        n = model.routing.pool_size
        entries = [f"layer {e}" for e in range(n)] + (["skip"] if model.routing.skip else [])
        return RouteView(shown, choices[0].T.numpy().astype(np.int64), entries)
    if model.kind != "routed":
        raise PromptViewError("routes are drawn for routed decoders; this run is a plain decoder")
    routed = as_routed(model)
    path = routed(ids).routing.layer_choices[0]
    choices = path[:, None].expand(-1, len(shown)).numpy().astype(np.int64)
    return RouteView(shown, choices, [f"layer {e}" for e in range(routed.routing.pool_size)])


def sample_text(run: TrainedRun, prompt: str, new_tokens: int, temperature: float, seed: int) -> str:
    """The prompt and a continuation drawn with a seeded generator: the same seed, the same text."""
    ids = prompt_ids(run, prompt)
    out = generate(run.model, ids, new_tokens, temperature=temperature, generator=torch.Generator().manual_seed(seed))
    return run.tokenizer.decode(out.tokens[0].tolist())
