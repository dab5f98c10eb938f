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
