"""The readout reward (`routing.reward: readout`) is what docs/routing.md, section 12, says.

- It changes no value: logits and the objective are those of the first-order reward, bit for bit.
- With one step the router's gradient is exactly the score-function gradient of the loss
  difference between reading out the step's output and reading out its input, token by token:
  sum_t (l_t(y_t) - l_t(x_t)) / n * d log p_t, a finite difference, where the gate's
  first-order reward <dL/dy, y - x> is not (the check tells the two apart).
- With several steps it is the first-order gradient with each step's direct part, <g_K, u_k>
  (g_K: dL/d final residual, u_k: the step's update), swapped for the exact loss change at the
  readout, l(final) - l(final - u_k).
"""

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from tests.helpers.token_models import token_model
from transformer.model.config import ModelConfig
from transformer.routing.token_decoder import ReadoutTerms, TokenRoutedDecoder, TokenRoutingInfo
from transformer.training.lm_loss import lm_loss
from transformer.training.objective import compute_objective

VOCAB = 13


def _model(reward: str, n_layers: int, kernels: str = "fast") -> TokenRoutedDecoder:
    """Only the task reaches the router (no balance, z or compute term), sampled routes."""
    cfg = ModelConfig(d_vocab=VOCAB, d_model=16, n_heads=2, n_layers=n_layers, n_ctx=12, kernels=kernels)
    model = token_model(
        cfg,
        seed=2,
        prime=1.0,
        pool_size=2,
        skip=True,
        capacity_factor=None,
        reward=reward,
        gradient="log_p",
        balance_weight=0.0,
        z_loss_weight=0.0,
    )
    return model.train()


def _tokens() -> Tensor:
    return torch.randint(0, VOCAB, (4, 11), generator=torch.Generator().manual_seed(5))


def _router_gradient(model: TokenRoutedDecoder, tokens: Tensor) -> tuple[Tensor, TokenRoutingInfo, Tensor]:
    model.zero_grad(set_to_none=True)
    model.router.generator.manual_seed(0)
    objective = compute_objective(model, tokens)
    objective.loss.backward(retain_graph=True)  # the scores' graph, for the several-steps check
    assert model.router.b_R.grad is not None
    return model.router.b_R.grad.clone(), objective.output.routing, objective.loss.detach()


@pytest.mark.parametrize("kernels", ["fast", "readable"])
def test_the_readout_reward_changes_no_value(kernels: str) -> None:
    first, readout = _model("first_order", 2, kernels), _model("readout", 2, kernels)
    tokens = _tokens()
    for model in (first, readout):
        model.router.generator.manual_seed(0)
    a, b = compute_objective(first, tokens), compute_objective(readout, tokens)
    assert torch.equal(a.output.logits, b.output.logits) and torch.equal(a.loss, b.loss)
    assert b.output.routing.readout is not None and a.output.routing.readout is None
    with torch.no_grad():  # and nothing extra where no gradient is taken
        assert readout(tokens[:, :-1]).routing.readout is None


def test_with_one_step_the_router_learns_from_the_exact_loss_difference_of_its_choice() -> None:
    readout, first = _model("readout", 1), _model("first_order", 1)
    tokens = _tokens()
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    gradient, info, _ = _router_gradient(readout, tokens)
    choice = info.layer_choices[..., 0]
    assert bool((choice == 2).any()) and bool((choice < 2).any()), "some tokens skip, some take a layer"

    def token_losses(logits: Tensor) -> Tensor:
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)

    with torch.no_grad():  # the step's input x and output y, each read out as if it were final
        x = readout.embed_tokens(inputs)
        y = readout(inputs, route=info.layer_choices).logits
        reward = (token_losses(y) - token_losses(readout.logits(x))) / targets.numel()
    assert bool((reward[choice == 2] == 0).all()), "a token that skipped changed nothing"
    p = info.probabilities[..., 0, :].detach()
    tau = readout.router.temperature
    expected = torch.einsum("bt,bte->e", reward, F.one_hot(choice, 3).float() - p) / tau  # R * d log p_c / d b_R
    torch.testing.assert_close(gradient, expected, rtol=1e-4, atol=1e-7)
    first_gradient, _, _ = _router_gradient(first, tokens)
    assert not torch.allclose(first_gradient, expected, rtol=0.1, atol=1e-5), "the first-order reward is another"


def test_with_several_steps_the_direct_part_is_exact_and_the_rest_first_order() -> None:
    readout, first = _model("readout", 3), _model("first_order", 3)
    tokens = _tokens()
    targets = tokens[:, 1:]
    gradient, info, _ = _router_gradient(readout, tokens)
    first_gradient, first_info, _ = _router_gradient(first, tokens)
    assert torch.equal(info.layer_choices, first_info.layer_choices)
    terms = info.readout
    assert isinstance(terms, ReadoutTerms)
    final = terms.final.clone().requires_grad_()
    (g_final,) = torch.autograd.grad(lm_loss(readout.logits(final), targets), final)
    with torch.no_grad():
        exact = (
            torch.stack(
                [
                    F.cross_entropy(readout.logits(terms.final).flatten(0, 1), targets.flatten(), reduction="none")
                    - F.cross_entropy(
                        readout.logits(terms.final - update).flatten(0, 1), targets.flatten(), reduction="none"
                    )
                    for update in terms.updates
                ]
            ).view(terms.scores.shape)
            / targets.numel()
        )
        first_order_direct = (g_final[None] * terms.updates).sum(-1)
    (swap,) = torch.autograd.grad((terms.scores * (exact - first_order_direct)).sum(), readout.router.b_R)
    torch.testing.assert_close(gradient, first_gradient + swap, rtol=1e-4, atol=1e-7)
    assert not torch.allclose(gradient, first_gradient, rtol=1e-2, atol=1e-6), "the swap must matter"
