"""Where each token goes in a token-routed decoder: its entry at every step, by token class and
by position, and how much the class (or position, or source) says about the choice.

A sequence router's path is one per window (transformer/analysis/routes.py); a token router's
choices are one per token per step, so the natural labels are the token's own: its class
(letters, digits, whitespace, punctuation, other) and where it sits in the window. The same
plug-in mutual information and shuffled-label baseline apply (`routes.mutual_information`): a
class that decides the choice carries up to H(class) bits beyond the baseline, a choice that
ignores the class carries none.

Only the argmax (inference) routes are counted, and a token counts for the entry it chose even
when the capacity dropped it: `dropped_fraction` says how often that happened.
"""

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Int
from torch import Tensor

from transformer.analysis.routes import MutualInformation, mutual_information
from transformer.data.tokenizer import TextTokenizer
from transformer.routing.token_decoder import TokenRoutedDecoder

TOKEN_CLASSES = ("letters", "digits", "whitespace", "punctuation", "other")


def character_class(text: str) -> str:
    """The class of a token's text. Whitespace-only is whitespace; otherwise leading and
    trailing whitespace is ignored (a BPE token ' the' is letters) and the rest must be all
    letters, all digits or all punctuation/symbols to be one of those; anything mixed is other."""
    if text and text.isspace():
        return "whitespace"
    core = text.strip()
    if not core:
        return "other"
    if all(char.isalpha() for char in core):
        return "letters"
    if all(char.isdigit() for char in core):
        return "digits"
    if all(unicodedata.category(char)[0] in "PS" for char in core):
        return "punctuation"
    return "other"


def token_classes(ids: Sequence[int], tokenizer: TextTokenizer) -> list[str]:
    """The class of each id's text; the end-of-text token is other."""
    known: dict[int, str] = {tokenizer.eot_id: "other"}
    return [known.setdefault(i, character_class(tokenizer.decode([i]))) for i in ids]


def shown_token(token_id: int, tokenizer: TextTokenizer) -> str:
    """One visible character for a token, so a row of choices lines up under the text: the first
    character of its text, with space, newline and tab drawn as ␣ ⏎ ⇥ and end-of-text as ¶."""
    if token_id == tokenizer.eot_id:
        return "¶"
    text = tokenizer.decode([token_id])
    first = text[:1] or "?"
    return {" ": "␣", "\n": "⏎", "\t": "⇥", "\r": "⏎"}.get(first, first if first.isprintable() else "?")


@torch.no_grad()
def token_choices(
    model: TokenRoutedDecoder, windows: Int[Tensor, "window pos"], batch_size: int = 64
) -> tuple[Int[Tensor, "window pos steps"], Bool[Tensor, "window pos steps"]]:
    """Each token's argmax entry at each step (skip is entry N) and whether a layer processed it
    (False where it skipped or the capacity dropped it)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    choices, processed = [], []
    try:
        for start in range(0, len(windows), batch_size):
            info = model(windows[start : start + batch_size].to(device)).routing
            choices.append(info.layer_choices.cpu())
            processed.append(info.processed.cpu())
    finally:
        model.train(was_training)
    if not choices:
        empty = windows.new_zeros((0, windows.shape[1], model.n_steps))
        return empty, empty.bool()
    return torch.cat(choices), torch.cat(processed)


def position_buckets(n_ctx: int, buckets: int) -> list[range]:
    """`buckets` contiguous ranges of positions covering 0..n_ctx-1, as equal as they can be."""
    edges = np.linspace(0, n_ctx, min(buckets, n_ctx) + 1).round().astype(int)
    return [range(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def _name(bucket: range) -> str:
    return f"{bucket.start}-{bucket.stop - 1}"


@dataclass
class TokenRouteReport:
    n_layers: int  # entries 0..n_layers-1 are layers; entry n_layers is skip when `skip`
    skip: bool
    n_steps: int
    tokens: int
    usage: list[list[float]]  # [step][entry]: fraction of all tokens
    classes: list[str]  # the classes present, in TOKEN_CLASSES order
    tokens_per_class: dict[str, int]
    usage_by_class: list[dict[str, list[float]]]  # [step][class][entry]; each list sums to 1
    positions: list[str]  # bucket names "a-b"
    usage_by_position: list[dict[str, list[float]]]  # [step][bucket][entry]
    layers_per_token_by_class: dict[str, float]  # layers that processed a token of the class, per token
    dropped_fraction: float  # of the choices of a layer, those the capacity turned away
    class_information: list[MutualInformation]  # I(choice at step k; class)
    position_information: list[MutualInformation]  # I(choice at step k; position bucket)
    label_information: list[MutualInformation]  # I(choice at step k; source label), one label: 0

    @property
    def n_entries(self) -> int:
        return self.n_layers + int(self.skip)

    def skip_by(self, usage: list[dict[str, list[float]]]) -> dict[str, float]:
        """Skip's share of each group's choices over all steps (0 without a skip entry)."""
        groups = usage[0].keys()
        if not self.skip:
            return dict.fromkeys(groups, 0.0)
        return {group: float(np.mean([step[group][-1] for step in usage])) for group in groups}

    def as_dict(self) -> dict[str, Any]:
        return {
            "granularity": "token",
            "n_layers": self.n_layers,
            "skip": self.skip,
            "steps": self.n_steps,
            "tokens": self.tokens,
            "usage": self.usage,
            "classes": self.classes,
            "tokens_per_class": self.tokens_per_class,
            "usage_by_class": self.usage_by_class,
            "skip_by_class": self.skip_by(self.usage_by_class),
            "layers_per_token_by_class": self.layers_per_token_by_class,
            "positions": self.positions,
            "usage_by_position": self.usage_by_position,
            "skip_by_position": self.skip_by(self.usage_by_position),
            "dropped_fraction": self.dropped_fraction,
            "class_mutual_information": [info.as_dict() for info in self.class_information],
            "position_mutual_information": [info.as_dict() for info in self.position_information],
            "label_mutual_information": [info.as_dict() for info in self.label_information],
        }


def _usage(choices: Int[np.ndarray, " n"], groups: Int[np.ndarray, " n"], n_groups: int, n_entries: int) -> Any:
    counts = np.bincount(groups * n_entries + choices, minlength=n_groups * n_entries).reshape(n_groups, n_entries)
    return counts / np.maximum(counts.sum(-1, keepdims=True), 1)


def analyse_token_routes(
    choices: Int[np.ndarray, "tokens steps"],
    processed: Bool[np.ndarray, "tokens steps"],
    classes: Sequence[str],
    positions: Int[np.ndarray, " tokens"],
    labels: Sequence[str],
    n_layers: int,
    skip: bool,
    n_ctx: int,
    buckets: int = 4,
    permutations: int = 100,
    seed: int = 0,
) -> TokenRouteReport:
    """Everything `transformer routes` prints for a token-routed run, from one row per token."""
    n_tokens, n_steps = choices.shape
    if not n_tokens or not len(classes) == len(positions) == len(labels) == n_tokens:
        raise ValueError(f"need one class, position and label per token and at least one token, got {n_tokens}")
    n_entries = n_layers + int(skip)
    present = [name for name in TOKEN_CLASSES if name in set(classes)]
    class_codes = np.array([present.index(name) for name in classes])
    ranges = position_buckets(n_ctx, buckets)
    bucket_codes = np.searchsorted([r.stop for r in ranges], positions, side="right")
    by_class = [_usage(choices[:, k], class_codes, len(present), n_entries) for k in range(n_steps)]
    by_position = [_usage(choices[:, k], bucket_codes, len(ranges), n_entries) for k in range(n_steps)]
    layers = processed.sum(-1)
    wanted = choices < n_layers

    def information(ys: Sequence[Any]) -> list[MutualInformation]:
        return [mutual_information(choices[:, k].tolist(), ys, permutations, seed) for k in range(n_steps)]

    return TokenRouteReport(
        n_layers=n_layers,
        skip=skip,
        n_steps=n_steps,
        tokens=n_tokens,
        usage=[(np.bincount(choices[:, k], minlength=n_entries) / n_tokens).tolist() for k in range(n_steps)],
        classes=present,
        tokens_per_class={name: int((class_codes == i).sum()) for i, name in enumerate(present)},
        usage_by_class=[{name: step[i].tolist() for i, name in enumerate(present)} for step in by_class],
        positions=[_name(r) for r in ranges],
        usage_by_position=[{_name(r): step[i].tolist() for i, r in enumerate(ranges)} for step in by_position],
        layers_per_token_by_class={name: float(layers[class_codes == i].mean()) for i, name in enumerate(present)},
        dropped_fraction=float((wanted & ~processed).sum() / max(int(wanted.sum()), 1)),
        class_information=information(list(classes)),
        position_information=information(bucket_codes.tolist()),
        label_information=information(list(labels)),
    )
