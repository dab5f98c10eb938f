"""On a GPU, routed dispatch (sequence- and token-routed, both kernel paths) computes what it
computes on the CPU: the same routes, logits and gradients. Skipped without CUDA."""

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
    """Per-step pools with skip (-inf logits for the other steps' layers), sampled routes (drawn
    on the CPU by the router's own generator, so both devices take the same) and the readout
    reward: the same routes, loss and gradients."""
    tokens = torch.randint(0, 23, (6, 13), generator=torch.Generator().manual_seed(4))
    routing = RoutingConfig(
        pool_size=2, granularity="token", pools="per_step", skip=True, compute_weight=0.01, reward="readout"
    )
    results = []
    for device in (torch.device("cpu"), torch.device("cuda")):
        torch.manual_seed(3)
        model = TokenRoutedDecoder(tiny_config(n_layers=2, kernels=kernels), routing).to(device).train()
        with torch.no_grad():
            model.router.W_R.normal_(0.0, 2.0, generator=torch.Generator().manual_seed(5))
        objective = compute_objective(model, tokens.to(device))
        objective.loss.backward()
        grads = [p.grad.cpu() if p.grad is not None else torch.zeros(p.shape) for p in model.parameters()]
        results.append((objective.output.routing.layer_choices.cpu(), objective.loss.detach().cpu(), grads))
    (cpu_route, cpu_loss, cpu_grads), (gpu_route, gpu_loss, gpu_grads) = results
    assert torch.equal(gpu_route, cpu_route)
    torch.testing.assert_close(gpu_loss, cpu_loss, atol=1e-5, rtol=1e-4)
    for gpu_grad, cpu_grad in zip(gpu_grads, cpu_grads, strict=True):
        torch.testing.assert_close(gpu_grad, cpu_grad, atol=1e-5, rtol=1e-4)
