"""Route analysis: mutual information scored against known values, its small-sample bias
measured by the shuffled baseline, the route report's counts, and losses on chosen targets."""

import math

import numpy as np
import pytest
import torch

from tests.helpers.routed_models import tiny_config
from transformer.analysis.routes import (
    analyse_routes,
    argmax_choices,
    as_paths,
    entropy_bits,
    mutual_information,
    pick_windows,
    scored_loss,
    tiled_windows,
)
from transformer.model.decoder import Decoder
from transformer.routing.config import RoutingConfig
from transformer.routing.decoder import RoutedDecoder
from transformer.training.evaluation import evaluate

PATHS = [(0, 1), (1, 1), (2, 0), (0, 0), (1, 2), (2, 2), (1, 0), (2, 1)]


def independent_sample(n: int, seed: int, n_paths: int = 6) -> tuple[list[tuple[int, ...]], list[str]]:
    generator = np.random.default_rng(seed)
    paths = [PATHS[i] for i in generator.integers(0, n_paths, n)]
    labels = [f"source{j}" for j in generator.integers(0, 2, n)]
    return paths, labels


def test_independent_path_and_label_have_mi_near_zero_and_near_the_shuffled_baseline() -> None:
    paths, labels = independent_sample(4000, seed=0)
    info = mutual_information(paths, labels, permutations=100, seed=0)
    # true MI is 0; what is left is the plug-in bias, (6 - 1)(2 - 1) / (2 n ln 2) = 0.0009 bits
    assert info.observed < 0.005, info
    assert abs(info.excess) < 3 * info.shuffled_std, info
    assert info.miller_madow_bias == pytest.approx(5 / (2 * 4000 * math.log(2)))
    assert info.shuffled_mean == pytest.approx(info.miller_madow_bias, rel=0.3), info


def test_a_path_that_a_balanced_binary_label_determines_carries_one_bit() -> None:
    labels = ["python", "prose"] * 50
    paths = [(0, 1) if label == "python" else (2, 1) for label in labels]
    info = mutual_information(paths, labels, permutations=100, seed=0)
    assert info.observed == pytest.approx(1.0, abs=1e-12)  # = H(label) = 1 bit
    assert info.shuffled_mean < 0.05 and info.excess > 0.95, info
    assert info.p_value == pytest.approx(1 / 101)  # no shuffle reaches it
    report = analyse_routes(paths, labels, pool_size=3, permutations=50, seed=0)
    step0, step1 = report.step_label
    assert step0.observed == pytest.approx(1.0, abs=1e-12)  # step 0's layer names the label
    assert step1.observed == pytest.approx(0.0, abs=1e-12)  # every sequence takes layer 1 at step 1


@pytest.mark.parametrize("seed", range(10))
def test_mi_lies_between_zero_and_both_entropies(seed: int) -> None:
    generator = np.random.default_rng(seed)
    n = int(generator.integers(5, 300))
    labels = generator.integers(0, int(generator.integers(2, 5)), n)
    coupled = generator.random(n) < generator.random()  # part of the paths copy the label
    paths = [
        PATHS[int(label)] if copy else PATHS[int(generator.integers(0, 8))]
        for label, copy in zip(labels, coupled, strict=True)
    ]
    info = mutual_information(paths, list(labels), permutations=5, seed=seed)
    h_path = entropy_bits(np.unique(np.array(paths), axis=0, return_counts=True)[1])
    h_label = entropy_bits(np.unique(labels, return_counts=True)[1])
    assert 0.0 <= info.observed <= min(h_path, h_label) + 1e-12, (info.observed, h_path, h_label)


def test_a_noisy_channel_carries_one_minus_its_flip_entropy() -> None:
    """A label copied into a one-step path with 10% of the copies flipped: I = 1 - H2(0.1)."""
    generator = np.random.default_rng(1)
    labels = generator.integers(0, 2, 10000)
    flipped = np.where(generator.random(10000) < 0.1, 1 - labels, labels)
    info = mutual_information([(int(layer),) for layer in flipped], list(labels), permutations=20, seed=0)
    exact = 1 + 0.1 * math.log2(0.1) + 0.9 * math.log2(0.9)
    # the estimate's standard error here is about 0.95 / sqrt(n) = 0.0095 bits
    assert info.observed == pytest.approx(exact, abs=0.02), (info.observed, exact)


def test_the_shuffled_baseline_is_the_small_sample_bias_and_the_excess_removes_it() -> None:
    """40 windows, 8 paths, 2 labels, truly independent: the plug-in MI is well above 0."""
    observed, baselines, excesses = [], [], []
    for seed in range(20):
        paths, labels = independent_sample(40, seed=100 + seed, n_paths=8)
        info = mutual_information(paths, labels, permutations=100, seed=seed)
        observed.append(info.observed)
        baselines.append(info.shuffled_mean)
        excesses.append(info.excess)
        assert info.shuffled_mean > 0.05, info  # the bias: the true MI is 0
    # Miller-Madow (8 - 1)(2 - 1) / (2 * 40 ln 2) = 0.126 bits; measured: 0.163 observed, 0.153 baseline
    assert np.mean(observed) > 0.1 and np.mean(baselines) > 0.1
    assert np.mean(baselines) == pytest.approx(7 / (80 * math.log(2)), rel=0.5)
    assert abs(np.mean(excesses)) < 0.04, np.mean(excesses)  # measured 0.010: the excess is ~0


def test_the_report_counts_paths_per_label_usage_and_entropies() -> None:
    paths = [(0, 1)] * 3 + [(1, 0)] * 3 + [(0, 1)] * 1 + [(2, 2)] * 5
    labels = ["a"] * 6 + ["b"] * 6
    report = analyse_routes(paths, labels, pool_size=3, permutations=10, seed=0)
    assert report.labels == ["a", "b"] and report.windows_per_label == {"a": 6, "b": 6}
    assert report.path_counts == {(2, 2): {"a": 0, "b": 5}, (0, 1): {"a": 3, "b": 1}, (1, 0): {"a": 3, "b": 0}}
    assert (report.distinct_paths, report.possible_paths) == (3, 9)
    assert report.usage[0] == pytest.approx([4 / 12, 3 / 12, 5 / 12])
    assert report.usage_entropy_bits[0] == pytest.approx(entropy_bits(np.array([4, 3, 5])))
    assert report.label_entropy_bits == pytest.approx(1.0)
    assert report.path_entropy_bits == pytest.approx(entropy_bits(np.array([5, 4, 3])))
    even = analyse_routes([(i, (i + 1) % 4) for i in range(4)], ["x"] * 4, pool_size=4, permutations=3)
    assert even.usage_entropy_bits == pytest.approx([2.0, 2.0])  # even use of 4 layers: log2 4
    assert even.path_label.observed == 0.0  # one label: nothing to tell apart


def test_tiled_windows_make_every_token_after_the_first_a_target_once() -> None:
    stream = torch.arange(50)
    windows = tiled_windows(stream, length=17, stride=16)
    assert windows.shape == (3, 17)  # tokens 0..48; token 49 would need a fourth window
    targets = windows[:, 1:].flatten()
    assert torch.equal(targets, torch.arange(1, 49))
    picked = pick_windows(windows, 2, torch.Generator().manual_seed(0))
    assert len(picked) == 2 and picked[0, 0] < picked[1, 0]  # distinct, in stream order
    assert tiled_windows(torch.arange(5), length=17, stride=16).shape == (0, 17)


def test_scored_loss_at_the_models_own_first_target_is_what_evaluate_measures() -> None:
    """So `eval --first-target N` is the same measurement as `evaluate`, on other targets."""
    torch.manual_seed(0)
    routed = RoutedDecoder(tiny_config(), RoutingConfig(pool_size=3, route_prefix_len=3, seed=1))
    torch.nn.init.normal_(routed.router.W_R, std=2.0)  # routes that differ between sequences
    routed.router.temperature = 0.7
    batches = [torch.randint(0, 23, (6, 13), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    evaluation = evaluate(routed, batches, route_samples=2, seed=5)
    assert scored_loss(routed, batches, first_target=3) == pytest.approx(evaluation.val_loss, abs=1e-6)
    sampled = scored_loss(routed, batches, first_target=3, route_samples=2, seed=5)
    assert evaluation.sampled_route_loss is not None
    assert sampled == pytest.approx(evaluation.sampled_route_loss, abs=1e-6)
    assert sampled != pytest.approx(evaluation.val_loss, abs=1e-4)  # sampled routes really differ
    later = scored_loss(routed, batches, first_target=8)
    routed.eval()  # argmax routes, as scored_loss uses
    logits = [routed(tokens[:, :-1]).logits for tokens in batches]
    by_hand = np.mean(
        [
            torch.nn.functional.cross_entropy(lg[:, 7:].flatten(0, 1), t[:, 8:].flatten()).item()
            for lg, t in zip(logits, batches, strict=True)
        ]
    )
    assert later == pytest.approx(by_hand, abs=1e-6)  # targets at positions 8..12 only
    plain = Decoder(tiny_config())
    assert scored_loss(plain, batches, first_target=0) == pytest.approx(evaluate(plain, batches).val_loss, abs=1e-6)


def test_argmax_choices_are_the_routes_the_model_takes() -> None:
    torch.manual_seed(0)
    routed = RoutedDecoder(tiny_config(), RoutingConfig(pool_size=3, route_prefix_len=3))
    torch.nn.init.normal_(routed.router.W_R, std=2.0)
    routed.eval()
    windows = torch.randint(0, 23, (10, 12), generator=torch.Generator().manual_seed(0))
    choices = argmax_choices(routed, windows, batch_size=4)  # three batches
    assert torch.equal(choices, routed(windows).routing.layer_choices)
    assert len(set(as_paths(choices))) > 1  # not one path for all: the check means something
    assert as_paths(torch.tensor([[0, 2, 1]])) == [(0, 2, 1)]


def test_with_per_step_pools_a_path_is_one_of_n_over_k_layers_at_each_of_k_steps() -> None:
    """N = 4 pool layers, K = 2 steps: shared pools allow 4^2 = 16 paths, per-step pools (step 0
    owns layers 0-1, step 1 layers 2-3) only 2^2 = 4."""
    cfg = tiny_config(n_layers=2)
    per_step = RoutedDecoder(cfg, RoutingConfig(pool_size=4, route_prefix_len=3, pools="per_step"))
    shared = RoutedDecoder(cfg, RoutingConfig(pool_size=4, route_prefix_len=3))
    assert (per_step.pool_size, per_step.choices_per_step, shared.choices_per_step) == (4, 2, 4)
    paths = [(0, 2), (1, 3), (0, 3), (1, 2)] * 3
    report = analyse_routes(paths, ["a", "b"] * 6, per_step.pool_size, 5, 0, None, per_step.choices_per_step)
    assert (report.distinct_paths, report.possible_paths) == (4, 4)
    assert len(report.usage[0]) == 4  # usage still over the whole pool: step 0 never uses 2 or 3
    assert report.usage[0][2:] == [0.0, 0.0] and report.as_dict()["possible_paths"] == 4
    assert analyse_routes(paths, ["a"] * 12, shared.pool_size, 5).possible_paths == 16
