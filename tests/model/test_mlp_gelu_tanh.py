"""`mlp="gelu_tanh"`: GPT-2's tanh estimate of GELU, what its checkpoints were trained with.
The readable formula equals PyTorch's `F.gelu(approximate="tanh")`, and both kernel paths of
the MLP compute the same function."""

import torch
import torch.nn.functional as F

from transformer.model.config import ModelConfig
from transformer.model.mlp import MLP, gelu, gelu_tanh


def test_formula_equals_pytorch_and_differs_from_the_exact_gelu() -> None:
    x = torch.linspace(-6, 6, 1001, dtype=torch.float64)
    torch.testing.assert_close(gelu_tanh(x), F.gelu(x, approximate="tanh"), atol=1e-15, rtol=0)
    # the estimate is close to, but not, the exact form: loading GPT-2 needs the right one
    assert 1e-5 < float((gelu_tanh(x) - gelu(x)).abs().max()) < 1e-3


def test_both_paths_agree() -> None:
    torch.manual_seed(0)
    readable = MLP(ModelConfig(d_model=8, d_mlp=16, mlp="gelu_tanh", kernels="readable")).double()
    fast = MLP(ModelConfig(d_model=8, d_mlp=16, mlp="gelu_tanh", kernels="fast")).double()
    with torch.no_grad():
        for parameter in readable.parameters():
            parameter.normal_(0, 0.5)
        fast.load_state_dict(readable.state_dict())
        x = torch.randn(2, 5, 8, dtype=torch.float64)
        torch.testing.assert_close(fast(x), readable(x), atol=1e-12, rtol=0)
        exact = MLP(ModelConfig(d_model=8, d_mlp=16, mlp="gelu")).double()
        exact.load_state_dict(readable.state_dict())
        assert not torch.allclose(exact(x), readable(x), atol=1e-9, rtol=0), "the option changes the function"
