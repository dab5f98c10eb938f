"""Embed and Unembed: exact against PyTorch's lookup and linear map, and, alone, a bigram model
that learns a Markov chain down to the chain's own entropy."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from transformer.model.config import ModelConfig
from transformer.model.decoder import Decoder
from transformer.model.embed import Embed, Unembed


def test_embed_is_a_row_lookup_like_f_embedding() -> None:
    torch.manual_seed(0)
    embed = Embed(d_vocab=11, d_model=5).double()
    tokens = torch.randint(11, (3, 7))
    assert torch.equal(embed(tokens), F.embedding(tokens, embed.W_E))


@pytest.mark.parametrize("bad_id", [-1, 11])
def test_embed_rejects_ids_outside_the_vocabulary(bad_id: int) -> None:
    # A negative id would otherwise silently index from the end of W_E.
    embed = Embed(d_vocab=11, d_model=5)
    tokens = torch.tensor([[0, 3, bad_id]])
    with pytest.raises(IndexError, match=r"\[0, 11\)"):
        embed(tokens)


def test_unembed_is_a_linear_map_like_f_linear() -> None:
    torch.manual_seed(0)
    unembed = Unembed(d_model=5, d_vocab=11).double()
    with torch.no_grad():
        unembed.b_U.normal_()  # a non-zero bias, so adding it is checked too
    resid = torch.randn(3, 7, 5, dtype=torch.float64)
    assert unembed.W_U is not None
    expected = F.linear(resid, unembed.W_U.T, unembed.b_U)
    torch.testing.assert_close(unembed(resid), expected, rtol=1e-12, atol=1e-12)


def test_tied_unembed_reads_with_the_embedding_transposed() -> None:
    torch.manual_seed(0)
    embed = Embed(d_vocab=11, d_model=5).double()
    unembed = Unembed(d_model=5, d_vocab=11, tied_to=embed).double()
    resid = torch.randn(2, 4, 5, dtype=torch.float64)
    assert unembed.W_U is None
    assert [name for name, _ in unembed.named_parameters()] == ["b_U"]
    torch.testing.assert_close(unembed(resid), F.linear(resid, embed.W_E, unembed.b_U))
    # The gradient of the unembedding lands in the one shared matrix.
    unembed(resid).sum().backward()
    assert embed.W_E.grad is not None and embed.W_E.grad.abs().sum() > 0


def test_tied_model_counts_the_shared_matrix_once() -> None:
    cfg = ModelConfig(d_vocab=50, d_model=16, n_heads=2, n_layers=1, n_ctx=8)
    untied = Decoder(cfg)
    tied = Decoder(ModelConfig(**{**cfg.to_dict(), "tie_embeddings": True}))
    n_untied = sum(p.numel() for p in untied.parameters())
    n_tied = sum(p.numel() for p in tied.parameters())
    assert n_untied - n_tied == 50 * cfg.d_model  # d_vocab
    assert sum(p is tied.embed.W_E for p in tied.parameters()) == 1
    assert "unembed.W_U" not in tied.state_dict()


# --- Learnable: Embed + Unembed alone is a bigram model --------------------------------------

VOCAB = 48
CONCENTRATION = 0.05  # low: each row puts its mass on a few successors, so H << ln(VOCAB)


def entropy(p: Tensor) -> Tensor:
    """Shannon entropy in nats along the last axis (0 log 0 = 0)."""
    nats: Tensor = -torch.special.xlogy(p, p).sum(-1)
    return nats


def random_chain(seed: int) -> tuple[Tensor, Tensor]:
    """A transition matrix with Dirichlet rows and its stationary distribution pi (pi P = pi)."""
    rows = np.random.default_rng(seed).dirichlet(np.full(VOCAB, CONCENTRATION), size=VOCAB)
    transition = torch.tensor(rows, dtype=torch.float64)
    transition = transition / transition.sum(-1, keepdim=True)
    # pi solves (P^T - I) pi = 0; one of those equations is redundant, so swap it for sum(pi) = 1.
    system = transition.T - torch.eye(VOCAB, dtype=torch.float64)
    system[-1] = 1.0
    target = torch.zeros(VOCAB, dtype=torch.float64)
    target[-1] = 1.0
    stationary = torch.linalg.solve(system, target)
    return transition, stationary


def sample_chain(
    transition: Tensor, stationary: Tensor, n_seqs: int, length: int, generator: torch.Generator
) -> Tensor:
    """Sequences that start from pi, so every position is distributed as pi."""
    state = torch.multinomial(stationary, n_seqs, replacement=True, generator=generator)
    seqs = [state]
    for _ in range(length - 1):
        state = torch.multinomial(transition[state], 1, generator=generator).squeeze(-1)
        seqs.append(state)
    return torch.stack(seqs, dim=1)


def bigram_loss(embed: Embed, unembed: Unembed, seqs: Tensor) -> Tensor:
    logits = unembed(embed(seqs[:, :-1]))
    return F.cross_entropy(logits.reshape(-1, VOCAB), seqs[:, 1:].reshape(-1))


def test_embed_unembed_learn_a_markov_chain_down_to_its_entropy() -> None:
    transition, stationary = random_chain(seed=0)
    generator = torch.Generator().manual_seed(0)
    train = sample_chain(transition, stationary, n_seqs=4096, length=65, generator=generator)
    held_out = sample_chain(transition, stationary, n_seqs=1024, length=65, generator=generator)

    # The chain's entropy rate, H = sum_i pi_i H(P[i]), with pi the exact stationary distribution:
    # the lowest expected loss any next-token predictor can reach on this chain.
    chain_entropy = float(stationary @ entropy(transition))
    # What a model that ignores the current token can reach: the entropy of pi itself.
    unigram_entropy = float(entropy(stationary))
    # The true chain's own loss on these held-out sequences: H up to sampling noise.
    true_loss = float(-torch.log(transition[held_out[:, :-1], held_out[:, 1:]]).mean())

    torch.manual_seed(0)
    # d_model = d_vocab: W_E @ W_U can be any matrix, so the chain's log-table is reachable.
    embed, unembed = Embed(VOCAB, VOCAB), Unembed(VOCAB, VOCAB)
    optimizer = torch.optim.Adam([*embed.parameters(), *unembed.parameters()], lr=0.1)
    epochs, batches = 6, torch.randperm(len(train), generator=generator).reshape(-1, 128)
    total_steps = epochs * len(batches)
    # Decaying the step size to zero lets Adam settle on the table instead of jittering around it.
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / total_steps)
    for _ in range(epochs):
        for batch in batches:
            loss = bigram_loss(embed, unembed, train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    with torch.no_grad():
        held_out_loss = float(bigram_loss(embed, unembed, held_out))

    report = (
        f"held-out CE {held_out_loss:.4f}, chain entropy H {chain_entropy:.4f}, true chain's "
        f"held-out CE {true_loss:.4f}, unigram entropy {unigram_entropy:.4f}, ln V {math.log(VOCAB):.4f}"
    )
    assert chain_entropy < 0.6 * math.log(VOCAB), "the chain is not low-entropy: " + report
    assert abs(held_out_loss - chain_entropy) < 0.02 * chain_entropy, report
    assert held_out_loss < 0.6 * unigram_entropy, report
