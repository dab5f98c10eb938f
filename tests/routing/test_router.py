"""The router: its shapes and modes, its own random stream, and, the test of the whole routed
decoder, that it learns from the task which layer each kind of sequence needs.

The learning tests use `MarkerChains` (tests/helpers/routing_tasks.py): two noisy Markov chains
over the same symbols whose likely successors differ at every symbol, each sequence opening
with its task's marker in the routing prefix. A layer that has learned one chain is badly wrong
about the other, so routing each task to its own layer is worth a lot of loss, and the router
can only find out which layer that is through the task gradient (the gate in transformer/routing/gate.py).
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from tests.helpers.routing_tasks import MarkerChains, make_marker_chains, route_task_agreement
from transformer.model.config import ModelConfig
from transformer.routing.config import RoutingConfig
from transformer.routing.decoder import RoutedDecoder
from transformer.routing.router import Router, temperature_at
from transformer.training.lm_loss import lm_loss

# --- shapes and modes -----------------------------------------------------------------------


def small_router(pool_size: int = 3, seed: int = 0) -> Router:
    cfg = ModelConfig(d_vocab=16, d_model=16, n_heads=2, n_layers=2, n_ctx=8)
    return Router(cfg, RoutingConfig(pool_size=pool_size, route_prefix_len=4, seed=seed))


def test_logits_are_float32_per_sequence_even_with_bfloat16_parameters() -> None:
    torch.manual_seed(0)
    router = small_router(pool_size=3).to(torch.bfloat16)
    with torch.no_grad():
        router.W_R.normal_()
        router.b_R.normal_()
    resid = torch.randn(5, 8, 16).to(torch.bfloat16)
    logits = router(resid, step=1)
    assert logits.shape == (5, 3)
    assert logits.dtype == torch.float32
    # The readout itself runs in float32: the same bfloat16 values multiplied in float32.
    summary = router.summary(resid, step=1).float()
    expected = summary @ router.W_R.float() + router.b_R.float()
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)


def test_logits_are_float32_under_bfloat16_autocast() -> None:
    router = small_router(pool_size=3)
    with torch.no_grad():
        router.W_R.normal_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = router(torch.randn(5, 8, 16), step=0)
    assert logits.dtype == torch.float32


def test_zero_output_weight_makes_first_choices_uniform() -> None:
    torch.manual_seed(0)
    router = small_router(pool_size=3)
    assert torch.count_nonzero(router.W_R) == 0
    logits = router(torch.randn(6, 8, 16), step=0)
    assert torch.equal(logits, torch.zeros(6, 3))
    for training in (True, False):
        router.train(training)
        torch.testing.assert_close(router.probabilities(logits), torch.full((6, 3), 1 / 3))


def test_training_probabilities_are_softmax_of_logits_over_temperature() -> None:
    router = small_router(pool_size=3)
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    router.temperature = 2.0
    router.train()
    torch.testing.assert_close(router.probabilities(logits), (logits / 2.0).softmax(-1))
    router.eval()  # evaluation reports the untempered distribution
    torch.testing.assert_close(router.probabilities(logits), logits.softmax(-1))


def test_eval_takes_the_argmax_and_draws_no_random_numbers() -> None:
    router = small_router(pool_size=4).eval()
    logits = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
    own_state, global_state = router.generator.get_state(), torch.get_rng_state()
    first, second = router.choose(logits), router.choose(logits)
    assert torch.equal(first, logits.argmax(-1))
    assert torch.equal(first, second)
    assert torch.equal(router.generator.get_state(), own_state), "eval consumed the router's generator"
    assert torch.equal(torch.get_rng_state(), global_state), "eval consumed the global RNG"


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_training_choices_follow_softmax_over_temperature(temperature: float) -> None:
    router = small_router(pool_size=4, seed=3).train()
    router.temperature = temperature
    draws = 20_000
    logits = torch.tensor([1.0, 0.0, -0.5, 2.0])
    choices = router.choose(logits.expand(draws, 4))
    frequencies = torch.bincount(choices, minlength=4).double() / draws
    expected = (logits / temperature).softmax(-1).double()
    standard_error = (expected * (1 - expected) / draws).sqrt()
    assert ((frequencies - expected).abs() < 4 * standard_error).all(), (frequencies, expected)
    # Pearson chi-square, 3 degrees of freedom: 11.34 is its 99th percentile.
    chi_square = float(((frequencies - expected) ** 2 / expected).sum() * draws)
    assert chi_square < 11.34, chi_square


def test_temperature_changes_the_choice_distribution() -> None:
    """Guards the test above against passing vacuously: the two temperatures give frequencies
    that differ by far more than sampling noise (softmax([1,0,-.5,2]/tau)[3] is 0.84 vs 0.39)."""
    logits = torch.tensor([1.0, 0.0, -0.5, 2.0]).expand(20_000, 4)
    share = []
    for temperature in (0.5, 2.0):
        router = small_router(pool_size=4, seed=3).train()
        router.temperature = temperature
        share.append(float((router.choose(logits) == 3).double().mean()))
    assert share[0] - share[1] > 0.4, share


def test_routes_come_from_the_routers_own_generator() -> None:
    """Dropout and any other use of the global RNG between routing calls leave the routes as
    they were, and routing itself draws nothing from the global RNG."""
    logits = torch.randn(256, 4, generator=torch.Generator().manual_seed(2))
    quiet, busy = small_router(pool_size=4, seed=7).train(), small_router(pool_size=4, seed=7).train()
    quiet_routes = [quiet.choose(logits) for _ in range(3)]
    busy_routes = []
    for _ in range(3):
        torch.rand(1000)
        F.dropout(torch.ones(100), 0.5, training=True)
        global_state = torch.get_rng_state()
        busy_routes.append(busy.choose(logits))
        assert torch.equal(torch.get_rng_state(), global_state), "routing consumed the global RNG"
    for quiet_choice, busy_choice in zip(quiet_routes, busy_routes, strict=True):
        assert torch.equal(quiet_choice, busy_choice)
    # Successive calls draw fresh noise: not the same routes every time.
    assert not torch.equal(quiet_routes[0], quiet_routes[1])


def test_noise_drawn_off_the_cpu_is_decided_by_the_routers_own_generator() -> None:
    """What a GPU does (`reseeded_uniform`, run here on the CPU): the router's generator state
    alone fixes the noise, so restoring it (an exact resume) repeats it; each draw advances the
    state by one seed, and leaves the global RNG alone; the noise is uniform on [0, 1)."""
    router = small_router(pool_size=4, seed=7).train()
    shape, cpu = torch.Size([50_000, 4]), torch.device("cpu")
    state, global_state = router.generator.get_state(), torch.get_rng_state()
    first = router.reseeded_uniform(shape, cpu)
    assert not torch.equal(router.generator.get_state(), state)
    second = router.reseeded_uniform(shape, cpu)
    assert not torch.equal(first, second)
    router.generator.set_state(state)
    assert torch.equal(router.reseeded_uniform(shape, cpu), first)
    assert torch.equal(torch.get_rng_state(), global_state), "drawing consumed the global RNG"
    assert float(first.min()) >= 0.0 and float(first.max()) < 1.0
    assert abs(float(first.mean()) - 0.5) < 0.005 and abs(float(first.var()) - 1 / 12) < 0.002


def test_same_seed_same_routes_other_seed_other_routes() -> None:
    logits = torch.zeros(256, 4)  # uniform: the noise alone decides
    first = small_router(pool_size=4, seed=11).train().choose(logits)
    again = small_router(pool_size=4, seed=11).train().choose(logits)
    other = small_router(pool_size=4, seed=12).train().choose(logits)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_temperature_anneals_from_start_to_end() -> None:
    routing = RoutingConfig(temperature_start=2.0, temperature_end=0.5)
    total = 100
    schedule = [temperature_at(routing, step, total) for step in range(total + 1)]
    assert schedule[0] == pytest.approx(2.0)
    assert schedule[total // 2] == pytest.approx(1.25)  # cosine: halfway in value at half time
    assert schedule[-1] == pytest.approx(0.5)
    assert all(later <= earlier for earlier, later in zip(schedule, schedule[1:], strict=False))
    assert temperature_at(routing, 10 * total, total) == pytest.approx(0.5)  # holds after the end
    assert temperature_at(routing, -5, total) == pytest.approx(2.0)


# --- the router learns from the task ----------------------------------------------------------

PREFIX = 2  # the task marker is the whole routing prefix
SEQ_LEN = 24  # inputs; each sample holds SEQ_LEN + 1 tokens (inputs and shifted targets)
BATCH = 32
HELD_OUT = 512


def marker_model(chains: MarkerChains, routing: RoutingConfig, routing_steps: int) -> RoutedDecoder:
    """d_model 32, one pool of `routing.pool_size` layers, `routing_steps` (K) choices."""
    cfg = ModelConfig(d_vocab=chains.d_vocab, d_model=32, n_heads=2, n_layers=routing_steps, n_ctx=SEQ_LEN, d_mlp=64)
    return RoutedDecoder(cfg, routing)


def task_loss(model: RoutedDecoder, tokens: Tensor, route: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """LM loss over targets past the routing prefix, and the layers each sequence went through."""
    output = model(tokens[:, :-1], route=route)
    logits, info = output.logits, output.routing
    return lm_loss(logits, tokens[:, 1:], first_target=PREFIX), info.layer_choices


def train(
    model: RoutedDecoder, chains: MarkerChains, train_steps: int, seed: int, lr: float, router_only: bool = False
) -> None:
    """LM loss plus the routing aux loss, temperature annealed as in real training."""
    params = model.router.parameters() if router_only else model.parameters()
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    data = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(train_steps):
        model.router.temperature = temperature_at(model.routing, step, train_steps)
        tokens, _ = chains.sample(BATCH, SEQ_LEN + 1, data)
        output = model(tokens[:, :-1])
        logits, info = output.logits, output.routing
        loss = lm_loss(logits, tokens[:, 1:], first_target=PREFIX) + info.aux_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def sampled_routes(model: RoutedDecoder, tokens: Tensor) -> Tensor:
    """Routes drawn from the router's own policy at temperature 1 (no gradients, no updates)."""
    model.train()
    model.router.temperature = 1.0
    with torch.no_grad():
        _, routes = task_loss(model, tokens)
    model.eval()
    return routes


def held_out_report(model: RoutedDecoder, chains: MarkerChains, seed: int) -> dict[str, float]:
    """Everything the learning tests judge, on fresh sequences: eval (argmax) route-task
    agreement, the same for routes sampled from the policy, and held-out losses with the
    router's routes and with uniformly random routes, next to the true process's loss on the
    same tokens (the floor) and the chains' entropy (its expectation)."""
    generator = torch.Generator().manual_seed(seed)
    tokens, task = chains.sample(HELD_OUT, SEQ_LEN + 1, generator)
    random_route = torch.randint(model.routing.pool_size, (HELD_OUT, model.n_steps), generator=generator)
    model.eval()
    with torch.no_grad():
        routed_loss, routes = task_loss(model, tokens)
        random_loss, _ = task_loss(model, tokens, route=random_route)
    return {
        "argmax_agreement": route_task_agreement(routes, task),
        "sampled_agreement": route_task_agreement(sampled_routes(model, tokens), task),
        "routed_loss": float(routed_loss),
        "random_route_loss": float(random_loss),
        "true_model_loss": chains.true_loss(tokens, task),
        "true_entropy": chains.scored_entropy(SEQ_LEN + 1),
    }


def trained_marker_model(gradient: str, routing_steps: int, seed: int = 0) -> tuple[RoutedDecoder, MarkerChains]:
    torch.manual_seed(seed)
    chains = make_marker_chains(n_symbols=12, prefix_len=PREFIX, noise=0.1, seed=seed)
    routing = RoutingConfig(pool_size=2, route_prefix_len=PREFIX, gradient=gradient, seed=seed)
    model = marker_model(chains, routing, routing_steps)
    train(model, chains, train_steps=200, seed=seed + 1, lr=5e-3)
    return model, chains


def assert_router_learned(report: dict[str, float]) -> None:
    assert report["argmax_agreement"] >= 0.95, report
    assert report["sampled_agreement"] >= 0.95, report  # the policy itself is confident
    # Near the floor; a model blind to the task could not go below 1.17 nats (the two chains'
    # mixture), against 0.61 for the true process.
    assert report["routed_loss"] < report["true_model_loss"] + 0.05, report
    # Random routes send half the sequences to the other task's specialist.
    assert report["random_route_loss"] > report["routed_loss"] + 0.2, report


# Two routing steps: slow (the one-step case proves the same learning in the default run).
@pytest.mark.parametrize("routing_steps", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_router_learns_which_layer_each_task_needs(routing_steps: int) -> None:
    """Trained end to end with the task loss (gradient mode "log_p_baseline", the default), the
    router sends each task to its own layer(s) and the layers specialise: the route is worth
    far more than chance, and the routed model comes close to the true process's loss. With two
    routing steps a route is the pair of layers."""
    model, chains = trained_marker_model("log_p_baseline", routing_steps)
    report = held_out_report(model, chains, seed=1234)
    print(report)
    assert_router_learned(report)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(1, 6))
@pytest.mark.parametrize("routing_steps", [1, 2])
def test_router_learns_for_other_seeds(routing_steps: int, seed: int) -> None:
    """The default run checks one seed; this checks the result is not that seed's luck."""
    model, chains = trained_marker_model("log_p_baseline", routing_steps, seed=seed)
    report = held_out_report(model, chains, seed=1234)
    print(report)
    assert_router_learned(report)


def test_router_without_task_gradient_learns_nothing() -> None:
    """Negative control: gradient "none" (a discrete choice with no path from the task loss to
    the router) leaves the policy a coin flip, so the layers do not specialise and the route is
    worth nothing. The argmax route is no evidence either way: with logits barely off zero,
    argmax is a linear split of the two marker summaries and often 'agrees' by accident."""
    model, chains = trained_marker_model("none", routing_steps=1)
    report = held_out_report(model, chains, seed=1234)
    print(report)
    assert report["sampled_agreement"] < 0.8, report  # chance is 0.5; learners reach >= 0.95
    assert abs(report["random_route_loss"] - report["routed_loss"]) < 0.02, report
    # The model still learns both chains (one layer can read the marker): it is the routing
    # that has learned nothing.
    assert report["routed_loss"] < report["true_model_loss"] + 0.05, report


@pytest.fixture(scope="module")
def specialists() -> tuple[RoutedDecoder, MarkerChains]:
    """Pool layer t trained only on task t (routes forced to the task), then frozen."""
    torch.manual_seed(0)
    chains = make_marker_chains(n_symbols=12, prefix_len=PREFIX, noise=0.1, seed=0)
    model = marker_model(chains, RoutingConfig(pool_size=2, route_prefix_len=PREFIX), routing_steps=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    data = torch.Generator().manual_seed(1)
    for _ in range(150):
        tokens, task = chains.sample(BATCH, SEQ_LEN + 1, data)
        loss, _ = task_loss(model, tokens, route=task[:, None])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.requires_grad_(False), chains


@pytest.mark.parametrize("gradient", ["log_p_baseline", "log_p", "p", "none"])
def test_router_alone_learns_to_pick_frozen_specialists(
    specialists: tuple[RoutedDecoder, MarkerChains], gradient: str
) -> None:
    """The cleanest signal: fixed, different layers, only a fresh router trains. Every mode with
    a task gradient finds layer t for task t (the oracle route's loss is the reference); "none"
    gets only the aux loss and stays a coin flip."""
    trained, chains = specialists
    routing = RoutingConfig(pool_size=2, route_prefix_len=PREFIX, gradient=gradient, seed=5)
    model = copy.deepcopy(trained)
    model.routing = routing
    torch.manual_seed(5)  # the fresh router's step embedding, whatever ran before
    model.router = Router(model.cfg, routing)
    train(model, chains, train_steps=100, seed=2, lr=1e-2, router_only=True)

    tokens, task = chains.sample(HELD_OUT, SEQ_LEN + 1, torch.Generator().manual_seed(1234))
    model.eval()
    with torch.no_grad():
        output = model(tokens[:, :-1])
        logits, info = output.logits, output.routing
        routed_loss = float(lm_loss(logits, tokens[:, 1:], first_target=PREFIX))
        oracle_loss = float(task_loss(model, tokens, route=task[:, None])[0])
        wrong_loss = float(task_loss(model, tokens, route=1 - task[:, None])[0])
    # Probability the router gives the task's own specialist (eval: temperature 1).
    p_specialist = float(info.probabilities[:, 0].gather(1, task[:, None]).mean())
    report = dict(p_specialist=p_specialist, routed=routed_loss, oracle=oracle_loss, wrong=wrong_loss)
    print(gradient, report)
    assert wrong_loss > oracle_loss + 2.0, report  # the specialists really are specialised
    if gradient == "none":
        assert abs(p_specialist - 0.5) < 0.15, report
    else:
        assert p_specialist > 0.95, report
        assert routed_loss < oracle_loss + 0.01, report
        assert float(info.decision_entropy) < 0.1 * math.log(2), report
