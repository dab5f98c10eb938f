"""Token routes by class and position: usage per class is a distribution over the entries, a
router built to send digits to layer 0 and letters to layer 1 carries I(choice; class) far above
the shuffled baseline, a uniformly random one carries none, and classes are what they say."""

from typing import Any

import numpy as np
import pytest
import torch

from tests.helpers.routed_models import tiny_config
from transformer.analysis.routes import entropy_bits
from transformer.analysis.token_routes import (
    analyse_token_routes,
    character_class,
    position_buckets,
    token_choices,
    token_classes,
)
from transformer.data.tokenizer import TextTokenizer, train_tokenizer
from transformer.routing.config import RoutingConfig
from transformer.routing.token_decoder import TokenRoutedDecoder

TEXT = "abc 123, def 4567! ghij 89; klm 0 nopq 12. rstu 345 vwx? yz 678 "
N_CTX = 16


def test_each_character_class() -> None:
    cases = {
        "a": "letters",
        " the": "letters",
        "7": "digits",
        " ": "whitespace",
        "\n": "whitespace",
        ",": "punctuation",
        "+": "punctuation",
        "a1": "other",
        "": "other",
    }
    assert {text: character_class(text) for text in cases} == cases


def test_position_buckets_cover_the_context_once() -> None:
    assert position_buckets(16, 4) == [range(0, 4), range(4, 8), range(8, 12), range(12, 16)]
    assert sum(len(r) for r in position_buckets(10, 3)) == 10 and len(position_buckets(2, 5)) == 2


def char_tokenizer() -> TextTokenizer:
    return train_tokenizer("char", [TEXT * 2])


def windows_of(tokenizer: TextTokenizer, count: int = 24, seed: int = 0) -> torch.Tensor:
    """`count` windows of N_CTX tokens cut at random offsets of the repeated text."""
    ids = torch.tensor(tokenizer.encode(TEXT * 8))
    starts = torch.randint(0, len(ids) - N_CTX, (count,), generator=torch.Generator().manual_seed(seed))
    return torch.stack([ids[s : s + N_CTX] for s in starts.tolist()])


def class_forced_model(tokenizer: TextTokenizer) -> TokenRoutedDecoder:
    """One routing step, 3 layers, no capacity limit; embeddings put digits at +10 e0, letters
    at -10 e0 and every other token at +10 e1, and the router reads e0 and e1: digits -> layer 0,
    letters -> layer 1, the rest -> layer 2."""
    torch.manual_seed(0)
    cfg = tiny_config(d_vocab=tokenizer.vocab_size, n_layers=1, n_ctx=N_CTX)
    model = TokenRoutedDecoder(cfg, RoutingConfig(granularity="token", pool_size=3, capacity_factor=None))
    with torch.no_grad():
        model.embed.W_E.zero_()
        for i in range(tokenizer.vocab_size):
            kind = character_class(tokenizer.decode([i]))
            model.embed.W_E[i, 0] = {"digits": 10.0, "letters": -10.0}.get(kind, 0.0)
            model.embed.W_E[i, 1] = 0.0 if kind in ("digits", "letters") else 10.0
        model.router.W_R.zero_()
        model.router.W_R[0, 0], model.router.W_R[0, 1], model.router.W_R[1, 2] = 5.0, -5.0, 5.0
    return model


def report_of(model: TokenRoutedDecoder, tokenizer: TextTokenizer, windows: torch.Tensor) -> dict[str, Any]:
    choices, processed = token_choices(model, windows, batch_size=10)
    classes = token_classes(windows.flatten().tolist(), tokenizer)
    positions = np.tile(np.arange(N_CTX), len(windows))
    report = analyse_token_routes(
        choices.flatten(0, 1).numpy(),
        processed.flatten(0, 1).numpy(),
        classes,
        positions,
        ["text"] * len(classes),
        model.routing.pool_size,
        model.routing.skip,
        N_CTX,
        permutations=200,
    )
    return report.as_dict()


def test_a_router_that_reads_the_class_carries_it_far_above_the_shuffled_baseline() -> None:
    tokenizer = char_tokenizer()
    model = class_forced_model(tokenizer)
    windows = windows_of(tokenizer)
    record = report_of(model, tokenizer, windows)
    by_class = record["usage_by_class"][0]
    assert (by_class["digits"][0], by_class["letters"][1], by_class["whitespace"][2]) == (1.0, 1.0, 1.0)
    for step in record["usage_by_class"]:
        assert all(sum(fractions) == pytest.approx(1.0) for fractions in step.values())
    info = record["class_mutual_information"][0]
    # the choice is the split digits / letters / the rest: it carries exactly that split's entropy
    n = record["tokens_per_class"]
    split = entropy_bits(np.array([n["digits"], n["letters"], sum(n.values()) - n["digits"] - n["letters"]]))
    assert info["observed"] == pytest.approx(split, abs=1e-9) and split > 1.0
    assert info["excess"] > 0.5 and info["p_value"] == pytest.approx(1 / 201)
    assert info["observed"] > info["shuffled_mean"] + 20 * info["shuffled_std"]


def test_a_uniformly_random_router_carries_no_more_than_the_shuffled_baseline() -> None:
    tokenizer = char_tokenizer()
    model = class_forced_model(tokenizer)
    model.routing = RoutingConfig(granularity="token", pool_size=3, capacity_factor=None, route_policy="random")
    record = report_of(model, tokenizer, windows_of(tokenizer))
    info = record["class_mutual_information"][0]
    assert max(record["usage"][0]) < 0.45  # the choices are spread, not all one layer (3 layers: 1/3 each)
    assert info["p_value"] > 0.05
    assert abs(info["excess"]) < 3 * info["shuffled_std"]


def test_skip_and_dropped_tokens_are_counted_by_class_and_position() -> None:
    """Hand-made choices: 2 layers and skip, 8 tokens at positions 0..3 twice."""
    choices = np.array([[2, 0], [2, 2], [0, 1], [1, 1], [2, 0], [2, 2], [0, 1], [1, 2]])
    processed = choices < 2
    processed[3, 1] = False  # token 3 chose layer 1 at step 1 and was dropped
    classes = ["whitespace", "whitespace", "letters", "letters"] * 2
    positions = np.array([0, 1, 2, 3] * 2)
    report = analyse_token_routes(choices, processed, classes, positions, ["a"] * 8, 2, True, 4, buckets=2)
    record = report.as_dict()
    assert record["usage_by_class"][0] == {"letters": [0.5, 0.5, 0.0], "whitespace": [0.0, 0.0, 1.0]}
    assert record["skip_by_class"] == {"letters": pytest.approx(1 / 8), "whitespace": pytest.approx(6 / 8)}
    assert record["positions"] == ["0-1", "2-3"] and record["skip_by_position"]["0-1"] == pytest.approx(6 / 8)
    assert record["layers_per_token_by_class"] == {"letters": pytest.approx(6 / 4), "whitespace": pytest.approx(2 / 4)}
    assert record["dropped_fraction"] == pytest.approx(1 / 9)  # 9 choices of a layer, one dropped
    assert record["usage"][1] == pytest.approx([2 / 8, 3 / 8, 3 / 8])
