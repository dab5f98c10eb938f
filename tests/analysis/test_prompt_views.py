"""What a checkpoint does with one prompt: attention patterns equal to the readable pattern,
routes equal to the model's choices, samples equal to the seeded generation."""

from pathlib import Path

import numpy as np
import pytest
import torch

from transformer.analysis import prompt_views as pv
from transformer.analysis.dashboard_data import summary_row
from transformer.analysis.plotting.runs import load_history
from transformer.analysis.token_routes import token_choices
from transformer.inference.generation import GenerationError, generate
from transformer.inference.loading import load_trained
from transformer.model.decoder import Decoder
from transformer.routing.decoder import as_routed
from transformer.routing.token_decoder import TokenRoutedDecoder


@pytest.fixture
def runs(dashboard_runs: dict[str, Path]) -> dict[str, Path]:
    return dashboard_runs


def test_attention_patterns_are_causal_distributions_equal_to_the_readable_pattern(runs: dict[str, Path]) -> None:
    run = load_trained(runs["plain"])
    view = pv.attention_view(run, "def main():")
    layers, heads, queries, keys = view.patterns.shape
    assert (layers, heads, queries, keys) == (2, 2, 11, 11)
    assert view.tokens[:3] == ["d", "e", "f"]
    np.testing.assert_allclose(view.patterns.sum(axis=-1), 1.0, atol=1e-6)
    assert np.triu(view.patterns, k=1).max() == 0.0  # no query sees a later key
    # the first layer's pattern, recomputed by hand from its weights
    model = run.model
    assert isinstance(model, Decoder)
    ids = torch.tensor([run.tokenizer.encode("def main():")])
    attn = pv.attentions(model)[0]
    first_norm = model.layers[0].ln1
    assert callable(first_norm)
    with torch.no_grad():
        x = first_norm(model.embed_tokens(ids))
        q, k = attn.project(x, attn.W_Q, attn.b_Q), attn.project(x, attn.W_K, attn.b_K)
        if attn.rotary is not None:
            q, k = attn.rotary(q, 0), attn.rotary(k, 0)
        bias = attn.alibi(11, 11, 0) if attn.alibi is not None else None
        expected = attn.pattern(q, k, attn.allowed(11, None, x.device), bias)[0]
    np.testing.assert_allclose(view.patterns[0], expected.double().numpy(), atol=1e-6)
    assert "pattern" not in attn.__dict__ and attn.fast == (model.cfg.kernels == "fast")  # restored


def test_routes_of_a_prompt_follow_the_model(runs: dict[str, Path]) -> None:
    routed = load_trained(runs["routed"])
    view = pv.route_view(routed, "class A:")
    assert view.choices.shape == (2, 8) and view.entries == ["layer 0", "layer 1", "layer 2"]
    path = as_routed(routed.model)(torch.tensor([routed.tokenizer.encode("class A:")])).routing.layer_choices[0]
    assert (view.choices == path.numpy()[:, None]).all()
    with pytest.raises(pv.PromptViewError):
        pv.route_view(load_trained(runs["plain"]), "class A:")
    with pytest.raises(pv.PromptViewError, match="plain decoders"):
        pv.attention_view(routed, "class A:")


def test_a_sample_is_the_seeded_generation_and_a_short_prompt_is_refused(runs: dict[str, Path]) -> None:
    run = load_trained(runs["routed"])
    text = pv.sample_text(run, "import os", 12, 0.8, seed=3)
    ids = torch.tensor([run.tokenizer.encode("import os")])
    expected = generate(run.model, ids, 12, temperature=0.8, generator=torch.Generator().manual_seed(3))
    assert text == run.tokenizer.decode(expected.tokens[0].tolist())
    assert text.startswith("import os") and text == pv.sample_text(run, "import os", 12, 0.8, seed=3)
    with pytest.raises(GenerationError, match="routing prefix"):
        pv.sample_text(run, "ab", 5, 1.0, seed=0)


@pytest.mark.slow
def test_a_token_routed_run_is_named_so_and_each_token_shows_its_own_choices(token_run: Path) -> None:
    assert summary_row(load_history(token_run, "token")).kind == "token-routed"
    run = load_trained(token_run)
    assert isinstance(run.model, TokenRoutedDecoder)
    view = pv.route_view(run, "class A:")
    choices, _ = token_choices(run.model, torch.tensor([run.tokenizer.encode("class A:")]))
    assert view.choices.shape == (2, 8) and (view.choices == choices[0].T.numpy()).all()
    assert view.entries == ["layer 0", "layer 1", "layer 2"]
