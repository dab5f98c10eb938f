"""The plain decoder is GPT-2's computation, exactly; it starts where GPT-2 starts (uniform
predictions, small residual writes) and it can learn (it memorises a fixed batch)."""

import math
from typing import cast

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from tests.helpers.attention_tasks import train
from tests.helpers.torch_references import causal_float_mask, torch_encoder_layer
from transformer.model.config import POSITIONAL_CHOICES, ModelConfig
from transformer.model.decoder import Decoder
from transformer.model.layer import TransformerLayer
from transformer.model.norm import LayerNorm


def decoder(**overrides: object) -> Decoder:
    values: dict[str, object] = dict(d_vocab=37, d_model=16, n_heads=4, n_layers=2, n_ctx=12)
    values.update(overrides)
    torch.manual_seed(0)
    return Decoder(ModelConfig(**values))  # type: ignore[arg-type]


def tokens(batch: int = 3, pos: int = 12, d_vocab: int = 37, seed: int = 1) -> Tensor:
    return torch.randint(0, d_vocab, (batch, pos), generator=torch.Generator().manual_seed(seed))


def reference_logits(model: Decoder, tokens: Tensor) -> Tensor:
    """GPT-2 from PyTorch's parts: F.embedding, nn.TransformerEncoderLayer, F.layer_norm, F.linear."""
    assert model.pos_embed is not None and isinstance(model.ln_final, LayerNorm)
    pos = tokens.shape[1]
    resid = F.embedding(tokens, model.embed.W_E) + model.pos_embed.W_pos[:pos]
    for layer in model.layers:
        resid = torch_encoder_layer(cast(TransformerLayer, layer))(
            resid, src_mask=causal_float_mask(pos, resid.dtype), is_causal=True
        )
    resid = F.layer_norm(resid, (resid.shape[-1],), model.ln_final.w, model.ln_final.b, model.ln_final.eps)
    return F.linear(resid, model.unembed.weight.T, model.unembed.b_U)


def test_equals_gpt2_built_from_torch_modules() -> None:
    model = decoder().eval()
    with torch.no_grad():  # move every parameter off its init (biases 0, gains 1) so all of them matter
        for name, parameter in model.named_parameters():
            parameter.normal_(1.0 if name.endswith(".w") else 0.0, 0.2)
        ours, expected = model(tokens()).logits, reference_logits(model, tokens())
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_initial_loss_is_uniform_guessing() -> None:
    """GPT-2 init writes little into the residual stream, so logits start near zero: the loss
    on any tokens is ln(d_vocab), what a uniform guess scores."""
    model = decoder(d_vocab=256, d_model=64, n_layers=2, n_ctx=32)
    batch = tokens(batch=8, pos=32, d_vocab=256)
    with torch.no_grad():
        loss = F.cross_entropy(model(batch).logits[:, :-1].flatten(0, 1), batch[:, 1:].flatten())
    message = f"initial loss {float(loss):.4f} vs ln 256 = {math.log(256):.4f}"
    print(message)
    assert abs(float(loss) - math.log(256)) < 0.1, message


def test_memorises_one_fixed_batch() -> None:
    """Each sequence opens with its own token, so every target is determined by its context:
    a model that can learn drives the loss on this batch to ~0."""
    model = decoder(d_vocab=32, d_model=32, n_heads=2, n_layers=2, n_ctx=16)
    batch = tokens(batch=4, pos=16, d_vocab=32)
    batch[:, 0] = torch.arange(4)

    def loss_of_step(_: int) -> Tensor:
        return F.cross_entropy(model(batch).logits[:, :-1].flatten(0, 1), batch[:, 1:].flatten())

    train(model, loss_of_step, steps=80, lr=1e-2)
    with torch.no_grad():
        final = float(loss_of_step(0))
    print(f"fixed batch: loss {final:.5f} after 80 steps (ln 32 = {math.log(32):.3f} at start)")
    assert final < 0.01


def test_gpt2_initialisation() -> None:
    cfg = ModelConfig(d_vocab=256, d_model=128, n_heads=4, n_layers=4, n_ctx=256)
    torch.manual_seed(0)
    model = Decoder(cfg)
    residual_writers = 0.02 / math.sqrt(2 * cfg.n_layers)
    parameter: Tensor
    for name, parameter in model.named_parameters():
        parameter = parameter.detach()
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("W_O", "W_out"):
            expected = residual_writers
        elif leaf.startswith("W_"):
            expected = 0.02
        elif leaf == "w":
            assert torch.equal(parameter, torch.ones_like(parameter)), name
            continue
        else:
            assert leaf.startswith("b"), name
            assert torch.equal(parameter, torch.zeros_like(parameter)), name
            continue
        std = float(parameter.std())
        assert abs(std / expected - 1) < 0.05, f"{name}: std {std:.5f}, expected {expected:.5f}"
        assert abs(float(parameter.mean())) < expected / 10, name


@pytest.mark.parametrize("positional", POSITIONAL_CHOICES)
def test_causal_logits_ignore_later_tokens(positional: str) -> None:
    model = decoder(positional=positional)
    original = tokens()
    before = model(original).logits
    for t in (0, 5, 10):
        changed = original.clone()
        changed[:, t + 1 :] = (changed[:, t + 1 :] + 1) % 37
        after = model(changed).logits
        torch.testing.assert_close(after[:, : t + 1], before[:, : t + 1], atol=1e-6, rtol=0)
        assert not torch.allclose(after[:, t + 1 :], before[:, t + 1 :], atol=1e-4)


@pytest.mark.parametrize("positional", POSITIONAL_CHOICES)
def test_batch_elements_are_independent(positional: str) -> None:
    model, batch = decoder(positional=positional), tokens()
    together = model(batch).logits
    for b in range(batch.shape[0]):
        torch.testing.assert_close(together[b : b + 1], model(batch[b : b + 1]).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("positional", POSITIONAL_CHOICES)
def test_sequence_longer_than_context_is_refused(positional: str) -> None:
    model = decoder(positional=positional)
    assert model(tokens(pos=12)).logits.shape == (3, 12, 37)
    with pytest.raises(ValueError, match="n_ctx=12"):
        model(tokens(pos=13))


def test_tied_embeddings_share_one_tensor() -> None:
    tied = decoder(tie_embeddings=True)
    untied = decoder(tie_embeddings=False)
    assert tied.unembed.W_U is None and "unembed.W_U" not in tied.state_dict()
    assert tied.unembed.weight.data_ptr() == tied.embed.W_E.data_ptr()
    n_params = sum(p.numel() for p in tied.parameters())
    assert n_params == sum(p.numel() for p in untied.parameters()) - 37 * 16
    # The shared matrix gets both ends' gradients: what an untied model with W_U = W_E.T gets
    # in W_E and in W_U, summed.
    untied.load_state_dict(tied.state_dict(), strict=False)
    assert untied.unembed.W_U is not None
    with torch.no_grad():
        untied.unembed.W_U.copy_(tied.embed.W_E.T)
    batch = tokens()
    for model in (tied, untied):
        F.cross_entropy(model(batch).logits[:, :-1].flatten(0, 1), batch[:, 1:].flatten()).backward()
    assert tied.embed.W_E.grad is not None and untied.embed.W_E.grad is not None
    assert untied.unembed.W_U.grad is not None
    torch.testing.assert_close(tied.embed.W_E.grad, untied.embed.W_E.grad + untied.unembed.W_U.grad.T)
