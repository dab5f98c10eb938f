"""Studying a trained model: its loss on chosen targets, the path each sequence takes, and
how much that path says about where the sequence came from.

Two questions, two commands (docs/analysis.md):
- `transformer eval`: how good is the model? For a routed model, with the router's argmax route
  (what inference uses) and with sampled routes (what training saw), and on which targets: a
  routed model scores only targets from its routing prefix P on, a plain one all of them, so a
  fair comparison fixes the first scored target for both (`scored_loss`).
- `transformer routes`: what does the router do? Each sequence's argmax path (one pool layer per
  step) is counted per label (e.g. the source a window came from), and the mutual information
  I(path; label) is set against the same quantity with the labels shuffled. The plug-in estimate
  of MI from a finite sample is biased upward (about (|paths| - 1)(|labels| - 1) / (2 n ln 2)
  bits, Miller-Madow), so only the excess over the shuffled baseline means something.

Entropies and MI here are in bits; `routing.losses` (training's own metrics) uses nats.
"""

import math
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from transformer.data.tokenizer import TextTokenizer
from transformer.model.decoder import DecoderEnds
from transformer.routing.decoder import RoutedDecoder
from transformer.training.lm_loss import lm_loss

RoutePath = tuple[int, ...]  # the pool layer chosen at each routing step

# --- windows ---------------------------------------------------------------------------------


def token_stream(documents: Sequence[str], tokenizer: TextTokenizer) -> Int[Tensor, " tokens"]:
    """doc0 EOT doc1 EOT ...: the stream training reads (transformer/data/tokens.py), all of it."""
    pieces = [np.append(ids, tokenizer.eot_id) for ids in tokenizer.encode_batch_numpy(list(documents))]
    return torch.from_numpy(np.concatenate(pieces).astype(np.int64))


def tiled_windows(stream: Int[Tensor, " tokens"], length: int, stride: int) -> Int[Tensor, "window length"]:
    """Every window of `length` tokens starting at 0, stride, 2 * stride, ... With
    length = n_ctx + 1 and stride = n_ctx, consecutive windows share one token, so every token
    after the first is a target exactly once. Empty when the stream is shorter than `length`."""
    if len(stream) < length:
        return stream.new_zeros((0, length))
    return stream.unfold(0, length, stride)


def pick_windows(
    windows: Int[Tensor, "window length"], count: int | None, generator: torch.Generator
) -> Int[Tensor, "picked length"]:
    """`count` distinct windows drawn with `generator`, in stream order; all of them when
    `count` is None or at least their number."""
    if count is None or count >= len(windows):
        return windows
    chosen = torch.randperm(len(windows), generator=generator)[:count].sort().values
    return windows[chosen]


# --- losses on chosen targets ----------------------------------------------------------------


@torch.no_grad()
def scored_loss(
    model: DecoderEnds,
    batches: list[Tensor],
    first_target: int,
    route_samples: int = 0,
    seed: int = 0,
) -> float:
    """Mean next-token loss (nats) over targets at sequence positions >= first_target, each
    batch [batch, pos + 1] tokens. route_samples = 0: argmax routes (or a plain model);
    k > 0: k sampled-route passes per batch, the draws evaluation.evaluate makes with the same
    seed, so at the model's own first target both give the same number."""
    was_training = model.training
    model.eval()
    losses = []
    try:
        if route_samples == 0:
            losses = [_batch_loss(model, tokens, first_target) for tokens in batches]
        else:
            with model.sampled_routes(seed):
                losses = [_batch_loss(model, t, first_target) for t in batches for _ in range(route_samples)]
    finally:
        model.train(was_training)
    if not losses:
        raise ValueError("no batch to evaluate")
    stacked = torch.stack(losses)
    return float(stacked.sum() / stacked.numel())


def _batch_loss(model: DecoderEnds, tokens: Int[Tensor, "batch pos_plus_1"], first_target: int) -> Tensor:
    return lm_loss(model(tokens[:, :-1]).logits, tokens[:, 1:], first_target).float()


# --- paths -----------------------------------------------------------------------------------


@torch.no_grad()
def argmax_choices(
    model: RoutedDecoder, windows: Int[Tensor, "window pos"], batch_size: int = 64
) -> Int[Tensor, "window steps"]:
    """The layer the router picks (argmax, as at inference) at each step, for each window.
    Only the first route_prefix_len tokens of a window decide it."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        choices = [
            model(windows[i : i + batch_size].to(device)).routing.layer_choices.cpu()
            for i in range(0, len(windows), batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(choices) if choices else windows.new_zeros((0, model.n_steps))


def as_paths(choices: Int[Tensor, "window steps"]) -> list[RoutePath]:
    return [tuple(int(layer) for layer in row) for row in choices.tolist()]


# --- information -----------------------------------------------------------------------------


def entropy_bits(counts: Float[np.ndarray, "*shape"] | Int[np.ndarray, "*shape"]) -> float:
    """Entropy (bits) of the distribution proportional to `counts` (all cells, flattened)."""
    flat = np.asarray(counts, dtype=np.float64).ravel()
    total = flat.sum()
    if total <= 0:
        return 0.0
    p = flat[flat > 0] / total
    return float(-(p * np.log2(p)).sum())


def codes(values: Sequence[Hashable]) -> tuple[list[Hashable], Int[np.ndarray, " n"]]:
    """Distinct values (in order of first appearance) and each value's index among them."""
    index: dict[Hashable, int] = {}
    coded = np.array([index.setdefault(value, len(index)) for value in values], dtype=np.int64)
    return list(index), coded


def contingency_tables(
    x_codes: Int[np.ndarray, " n"], y_codes: Int[np.ndarray, "tables n"], n_x: int, n_y: int
) -> Int[np.ndarray, "tables n_x n_y"]:
    """table[t, i, j] = number of samples with x = i and y = j in labelling t of the samples
    (one table per row of y_codes: the shuffled baselines are computed all at once)."""
    n_tables = y_codes.shape[0]
    cells = (np.arange(n_tables)[:, None] * n_x + x_codes[None, :]) * n_y + y_codes
    return np.bincount(cells.ravel(), minlength=n_tables * n_x * n_y).reshape(n_tables, n_x, n_y)


def mutual_information_bits(tables: Int[np.ndarray, "*tables n_x n_y"]) -> Float[np.ndarray, "*tables"]:
    """Plug-in I(X; Y) = H(X) + H(Y) - H(X, Y) of each contingency table's empirical joint
    distribution, in bits. With counts c and n samples, each entropy is log2 n - sum(c log2 c) / n,
    so I = log2 n + (sum c_xy log2 c_xy - sum c_x log2 c_x - sum c_y log2 c_y) / n."""
    counts = tables.astype(np.float64)
    n = np.maximum(counts.sum(axis=(-2, -1)), 1.0)
    joint = _sum_c_log2_c(counts.reshape(*counts.shape[:-2], -1))
    x_part, y_part = _sum_c_log2_c(counts.sum(-1)), _sum_c_log2_c(counts.sum(-2))
    mi: np.ndarray[Any, np.dtype[np.float64]] = np.log2(n) + (joint - x_part - y_part) / n
    mi = np.maximum(mi, 0.0)  # rounding leaves -1e-16 where X and Y are independent in the sample
    return mi


def _sum_c_log2_c(counts: Float[np.ndarray, "*tables k"]) -> Float[np.ndarray, "*tables"]:
    safe = np.where(counts > 0, counts, 1.0)  # 0 log 0 = 0
    summed: np.ndarray[Any, np.dtype[np.float64]] = (counts * np.log2(safe)).sum(axis=-1)
    return summed


@dataclass
class MutualInformation:
    """I(X; Y) of a sample, and what shuffling Y (breaking any dependence) gives on it."""

    observed: float  # bits
    shuffled_mean: float  # bits: the plug-in estimate's bias at this sample size
    shuffled_std: float
    permutations: int
    p_value: float  # (1 + shuffles with MI >= observed) / (1 + permutations)
    miller_madow_bias: float  # (|X| - 1)(|Y| - 1) / (2 n ln 2): the bias, from a formula

    @property
    def excess(self) -> float:
        """What the sample says beyond chance: observed minus the shuffled mean."""
        return self.observed - self.shuffled_mean

    def as_dict(self) -> dict[str, float | int]:
        return {**self.__dict__, "excess": self.excess}


def mutual_information(
    xs: Sequence[Hashable], ys: Sequence[Hashable], permutations: int = 100, seed: int = 0
) -> MutualInformation:
    """I(X; Y) in bits against a baseline of `permutations` shuffles of ys, drawn from a
    generator seeded with `seed` (the same draws on every call)."""
    if len(xs) != len(ys):
        raise ValueError(f"{len(xs)} values of X and {len(ys)} of Y: need one pair per sample")
    if permutations < 1:
        raise ValueError(f"permutations={permutations} must be at least 1")
    x_values, x_codes = codes(xs)
    y_values, y_codes = codes(ys)
    n_x, n_y = len(x_values), len(y_values)
    generator = np.random.default_rng(seed)
    labellings = np.stack([y_codes] + [generator.permutation(y_codes) for _ in range(permutations)])
    every = mutual_information_bits(contingency_tables(x_codes, labellings, n_x, n_y))
    observed, shuffled = float(every[0]), every[1:]
    n = len(xs)
    return MutualInformation(
        observed=observed,
        shuffled_mean=float(shuffled.mean()),
        shuffled_std=float(shuffled.std()),
        permutations=permutations,
        p_value=float((1 + (shuffled >= observed - 1e-12).sum()) / (1 + permutations)),
        miller_madow_bias=(n_x - 1) * (n_y - 1) / (2 * n * math.log(2)) if n else 0.0,
    )


# --- the report ------------------------------------------------------------------------------


@dataclass
class RouteReport:
    labels: list[str]
    windows_per_label: dict[str, int]
    pool_size: int
    choices_per_step: int  # the pool_size layers when shared; with per-step pools a step's N / K
    n_steps: int
    path_counts: dict[RoutePath, dict[str, int]]  # most used path first
    usage: list[list[float]]  # [steps][pool]: fraction of windows sent to each layer
    usage_entropy_bits: list[float]  # per step; log2(pool_size) is even use
    path_entropy_bits: float
    label_entropy_bits: float
    path_label: MutualInformation
    step_label: list[MutualInformation] = field(default_factory=list)  # layer at step k vs label

    @property
    def distinct_paths(self) -> int:
        return len(self.path_counts)

    @property
    def possible_paths(self) -> int:
        return int(self.choices_per_step**self.n_steps)

    def as_dict(self) -> dict[str, Any]:
        return {
            "labels": self.labels,
            "windows_per_label": self.windows_per_label,
            "pool_size": self.pool_size,
            "choices_per_step": self.choices_per_step,
            "steps": self.n_steps,
            "paths": [
                {"path": list(path), "counts": counts, "total": sum(counts.values())}
                for path, counts in self.path_counts.items()
            ],
            "distinct_paths": self.distinct_paths,
            "possible_paths": self.possible_paths,
            "usage": self.usage,
            "usage_entropy_bits": self.usage_entropy_bits,
            "path_entropy_bits": self.path_entropy_bits,
            "label_entropy_bits": self.label_entropy_bits,
            "mutual_information": self.path_label.as_dict(),
            "per_step_mutual_information": [step.as_dict() for step in self.step_label],
        }


def analyse_routes(
    paths: Sequence[RoutePath],
    labels: Sequence[str],
    pool_size: int,
    permutations: int = 100,
    seed: int = 0,
    label_order: Sequence[str] | None = None,
    choices_per_step: int | None = None,
) -> RouteReport:
    """Everything `transformer routes` prints, from one path and one label per window.
    `choices_per_step`: the layers one step may pick (default all `pool_size`; with per-step
    pools N / K), which sets how many paths are possible."""
    if len(paths) != len(labels) or not paths:
        raise ValueError(f"need one label per path and at least one window, got {len(paths)} and {len(labels)}")
    n_steps = len(paths[0])
    order = list(label_order) if label_order is not None else list(dict.fromkeys(labels))
    per_label = Counter(labels)
    joint = Counter(zip(paths, labels, strict=True))
    totals = Counter(paths)
    ranked = sorted(totals, key=lambda path: (-totals[path], path))
    path_counts = {path: {label: joint[path, label] for label in order} for path in ranked}
    layer_counts = np.zeros((n_steps, pool_size))
    for path, count in totals.items():
        layer_counts[np.arange(n_steps), list(path)] += count
    steps = [mutual_information([path[k] for path in paths], labels, permutations, seed) for k in range(n_steps)]
    return RouteReport(
        labels=order,
        windows_per_label={label: per_label[label] for label in order},
        pool_size=pool_size,
        choices_per_step=pool_size if choices_per_step is None else choices_per_step,
        n_steps=n_steps,
        path_counts=path_counts,
        usage=(layer_counts / len(paths)).tolist(),
        usage_entropy_bits=[entropy_bits(row) for row in layer_counts],
        path_entropy_bits=entropy_bits(np.array(list(totals.values()))),
        label_entropy_bits=entropy_bits(np.array(list(per_label.values()))),
        path_label=mutual_information(paths, labels, permutations, seed),
        step_label=steps,
    )
