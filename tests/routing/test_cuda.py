"""On a GPU, routed dispatch (sequence- and token-routed, both kernel paths) computes what it
computes on the CPU: the same routes, logits and gradients; a token-routed training step waits
for the device once per routing step, no more; routes sampled there (from noise drawn on the
device) are the router's generator's, and follow the softmax. Skipped without CUDA."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from tests.helpers.routed_models import tiny_config
from transformer.model.decoder import DecoderEnds
from transformer.routing.config import RoutingConfig
from transformer.routing.decoder import RoutedDecoder
from transformer.routing.token_decoder import TokenRoutedDecoder
from transformer.training.objective import compute_objective

pytestmark = pytest.mark.cuda
CUDA = torch.device("cuda")


def routed(granularity: str, kernels: str, device: torch.device) -> DecoderEnds:
    torch.manual_seed(3)
    cfg = tiny_config(n_layers=2, kernels=kernels)
    routing = RoutingConfig(pool_size=4, route_prefix_len=4, granularity=granularity)
    model = TokenRoutedDecoder(cfg, routing) if granularity == "token" else RoutedDecoder(cfg, routing)
    return model.to(device).eval()


@pytest.mark.parametrize("kernels", ["readable", "fast"])
@pytest.mark.parametrize("granularity", ["sequence", "token"])
def test_routed_dispatch_on_cuda_equals_the_cpu(granularity: str, kernels: str) -> None:
    tokens = torch.randint(0, 23, (6, 12), generator=torch.Generator().manual_seed(4))
    results = []
    for device in (torch.device("cpu"), torch.device("cuda")):
        model = routed(granularity, kernels, device)
        output = model(tokens.to(device))
        F.cross_entropy(output.logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten().to(device)).backward()
        grads = [p.grad.cpu() if p.grad is not None else torch.zeros(p.shape) for p in model.parameters()]
        results.append((output.logits.detach().cpu(), grads))
    (cpu_logits, cpu_grads), (gpu_logits, gpu_grads) = results
    torch.testing.assert_close(gpu_logits, cpu_logits, atol=1e-5, rtol=1e-4)
    for gpu_grad, cpu_grad in zip(gpu_grads, cpu_grads, strict=True):
        torch.testing.assert_close(gpu_grad, cpu_grad, atol=1e-5, rtol=1e-4)
    assert any(g.abs().sum() > 0 for g in gpu_grads)


@pytest.mark.parametrize("kernels", ["readable", "fast"])
def test_a_training_step_of_the_mixture_of_depths_form_on_cuda_equals_the_cpu(kernels: str) -> None:
    """Per-step pools with skip (-inf logits for the other steps' layers), the routes the CPU
    sampled (a GPU draws its own noise, so it is handed them) and the readout reward: the same
    loss and gradients."""
    tokens = torch.randint(0, 23, (6, 13), generator=torch.Generator().manual_seed(4))
    routing = RoutingConfig(
        pool_size=2, granularity="token", pools="per_step", skip=True, compute_weight=0.01, reward="readout"
    )
    results, routes = [], None
    for device in (torch.device("cpu"), torch.device("cuda")):
        torch.manual_seed(3)
        model = TokenRoutedDecoder(tiny_config(n_layers=2, kernels=kernels), routing).to(device).train()
        with torch.no_grad():
            model.router.W_R.normal_(0.0, 2.0, generator=torch.Generator().manual_seed(5))
        objective = compute_objective(model, tokens.to(device), route=routes.to(device) if routes is not None else None)
        objective.loss.backward()
        grads = [p.grad.cpu() if p.grad is not None else torch.zeros(p.shape) for p in model.parameters()]
        results.append((objective.loss.detach().cpu(), grads))
        routes = objective.output.routing.layer_choices.cpu()
    (cpu_loss, cpu_grads), (gpu_loss, gpu_grads) = results
    torch.testing.assert_close(gpu_loss, cpu_loss, atol=1e-5, rtol=1e-4)
    for gpu_grad, cpu_grad in zip(gpu_grads, cpu_grads, strict=True):
        torch.testing.assert_close(gpu_grad, cpu_grad, atol=1e-5, rtol=1e-4)


def token_model(seed: int = 3) -> TokenRoutedDecoder:
    """Token-all as `transformer train` runs it by default: no capacity, the batched dispatch."""
    routing = RoutingConfig(granularity="token", pool_size=4, token_attention="all", capacity_factor=None)
    torch.manual_seed(seed)
    model = TokenRoutedDecoder(tiny_config(n_layers=3, kernels="fast", n_ctx=32), routing).to(CUDA).train()
    model.set_training_step(10, 100)
    return model


def sequence_model() -> RoutedDecoder:
    torch.manual_seed(3)
    routing = RoutingConfig(pool_size=4, route_prefix_len=4)
    model = RoutedDecoder(tiny_config(n_layers=3, kernels="fast", n_ctx=32), routing).to(CUDA).train()
    model.set_training_step(10, 100)
    return model


@pytest.mark.parametrize("granularity", ["token", "sequence"])
def test_a_routed_training_step_waits_for_the_device_once_per_routing_step(granularity: str) -> None:
    """The dispatch needs each layer's group size on the host to shape what runs next: one read
    per routing step, and no other wait in the forward, the backward, the clipping or the fused
    update (the routes' noise is drawn on the device; counts are `tally`s, not bincounts)."""
    model: DecoderEnds = token_model() if granularity == "token" else sequence_model()
    parameters = list(model.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=1e-3, fused=True)
    tokens = torch.randint(0, 23, (8, 33), generator=torch.Generator().manual_seed(4)).to(CUDA)

    def step() -> None:
        objective = compute_objective(model, tokens)
        objective.loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # lazy initialisation is not counted
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    waits = [f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)]
    assert len(waits) == 3, waits  # K = 3 routing steps


def test_routes_sampled_on_cuda_are_decided_by_the_routers_own_generator() -> None:
    """The same seed gives the same routes; restoring the router's (CPU) generator state repeats
    them, which is what an exact resume restores; the next draw differs."""
    tokens = torch.randint(0, 23, (8, 32), generator=torch.Generator().manual_seed(4)).to(CUDA)
    first, second = token_model(), token_model()
    with torch.no_grad():
        for model in (first, second):
            model.router.W_R.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(5))
        state = first.router.generator.get_state()
        routes = first(tokens).routing.layer_choices
        assert torch.equal(second(tokens).routing.layer_choices, routes)
        assert not torch.equal(first.router.generator.get_state(), state), "the draw advanced the generator"
        again = first(tokens).routing.layer_choices
        assert not torch.equal(again, routes)
        first.router.generator.set_state(state)
        assert torch.equal(first(tokens).routing.layer_choices, routes)


def test_gumbel_argmax_on_cuda_samples_the_softmax() -> None:
    """200,000 draws from fixed logits at tau = 0.5: each choice's frequency is its
    probability under softmax(logits / tau) to within 0.005 (5 standard errors)."""
    router = token_model().router
    router.temperature = 0.5
    logits = torch.tensor([0.0, 0.3, -0.4, 0.1, 0.2], device=CUDA).expand(200_000, 5)
    frequencies = torch.bincount(router.choose(logits), minlength=5).float() / 200_000
    torch.testing.assert_close(frequencies, (logits[0] / 0.5).softmax(-1), atol=0.005, rtol=0)
