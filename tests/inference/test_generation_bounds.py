"""Generation stays within bounds: what `stream` holds does not grow with the text (the cache and
the window stop at n_ctx, past logits are not kept), a request is at most MAX_NEW_TOKENS, and
ids the tokenizer cannot decode (a d_vocab padded above its size) are never drawn."""

import gc
import weakref

import pytest
import torch
from torch import Tensor

from transformer.inference import generation
from transformer.inference.generation import GenerationError, check_settings, generate, stream
from transformer.inference.limits import MAX_NEW_TOKENS
from transformer.inference.sampling import next_token_logits, sample
from transformer.model.config import ModelConfig
from transformer.model.decoder import Decoder
from transformer.model.kv_cache import KVCache

D_VOCAB, DECODABLE, N_CTX = 29, 20, 8


def padded_model() -> Decoder:
    """A model whose padding ids (DECODABLE .. D_VOCAB-1) have by far the largest logits, as an
    untrained or damaged model's may: unmasked, every draw is a padding id."""
    torch.manual_seed(0)
    model = Decoder(ModelConfig(d_vocab=D_VOCAB, d_model=16, n_heads=2, n_layers=1, n_ctx=N_CTX)).eval()
    with torch.no_grad():
        model.unembed.b_U[DECODABLE:] = 50.0
    return model


PROMPT = torch.tensor([[1, 2, 3]])


def test_padding_ids_are_never_drawn_when_the_tokenizer_size_is_given() -> None:
    model = padded_model()
    unmasked = generate(model, PROMPT, 12, temperature=0.0).tokens[0, 3:]
    assert bool((unmasked >= DECODABLE).all())  # the test can fail: padding wins without the mask
    for temperature in (0.0, 5.0):
        out = generate(
            model, PROMPT, 16, temperature, generator=torch.Generator().manual_seed(0), n_decodable=DECODABLE
        )
        assert int(out.tokens.max()) < DECODABLE
        assert bool(torch.isneginf(out.logits[..., DECODABLE:]).all())  # masked, not merely unlikely


def test_past_the_context_the_window_and_the_cache_stop_at_n_ctx(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mechanism behind flat memory: the cache never holds more than n_ctx positions and each
    uncached forward reads exactly the last n_ctx tokens, however many tokens are written."""
    model = padded_model()
    windows: list[int] = []
    cached: list[int] = []
    cached_forward = generation.cached_logits

    def record_window(model: Decoder, tokens: Tensor) -> Tensor:
        windows.append(tokens.shape[1])
        return next_token_logits(model, tokens)

    def record_cache(model: Decoder, fresh: Tensor, cache: KVCache) -> Tensor:
        logits = cached_forward(model, fresh, cache)
        cached.append(cache.length)
        return logits

    monkeypatch.setattr(generation, "next_token_logits", record_window)
    monkeypatch.setattr(generation, "cached_logits", record_cache)
    new = 3 * N_CTX
    ids = [int(token) for token, _ in stream(model, PROMPT, new, temperature=0.0, n_decodable=DECODABLE)]
    assert len(ids) == new
    assert cached == list(range(PROMPT.shape[1], N_CTX + 1))  # prefill, then one position per call
    assert windows == [N_CTX] * (new - len(cached))
    # and the bounded window changes nothing: the text is the full-forward reference's
    monkeypatch.undo()
    reference = sample(padded_model(), PROMPT, new, temperature=0.0)[0, 3:].tolist()
    unmasked = [int(token) for token, _ in stream(padded_model(), PROMPT, new, temperature=0.0)]
    assert unmasked == reference


def test_stream_keeps_no_logits_of_past_steps() -> None:
    """`transformer generate` keeps only ids; if `stream` itself kept every step's logits, memory
    would grow by d_vocab floats per token (1.6 GB for 8,000 tokens of a 50,304-id vocabulary)."""
    alive: list[weakref.ref[Tensor]] = []
    for _, logits in stream(padded_model(), PROMPT, 3 * N_CTX, temperature=1.0, generator=torch.Generator()):
        alive.append(weakref.ref(logits))
        del logits
    gc.collect()
    assert len(alive) == 3 * N_CTX
    assert sum(ref() is not None for ref in alive) == 0


def test_a_request_is_at_most_max_new_tokens() -> None:
    check_settings(MAX_NEW_TOKENS, 1.0)
    for huge in (MAX_NEW_TOKENS + 1, 10**20):
        with pytest.raises(GenerationError, match=rf"max_new_tokens={huge} must be between 0 and 1,000,000"):
            check_settings(huge, 1.0)
    with pytest.raises(GenerationError, match="must be between 0 and"):
        generate(padded_model(), PROMPT, 10**20)


def test_each_steps_logits_own_only_their_row_not_the_forwards_output() -> None:
    """Before, a step's logits were the view `logits[:, -1]` of the forward's batch x pos x d_vocab
    output, so every kept step kept a whole forward alive (past n_ctx: n_ctx times the memory)."""
    for _, logits in stream(padded_model(), PROMPT, 2 * N_CTX, temperature=0.0):
        assert logits.untyped_storage().nbytes() == logits.numel() * logits.element_size() == D_VOCAB * 4
