"""Attention computes exactly what PyTorch's MultiheadAttention computes, its two paths agree,
it never looks ahead, and it learns the things only attention can: moving a token k places
forward, and (with two layers) completing a repeated sequence through an induction head."""

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from jaxtyping import TypeCheckError
from torch import Tensor, nn

from tests.helpers.attention_tasks import (
    attention_on_offset,
    attention_patterns,
    next_token_losses,
    repeated_halves,
    train,
    uniform_tokens,
)
from tests.helpers.torch_references import causal_float_mask, torch_attention
from transformer.model.attention import Attention
from transformer.model.config import ModelConfig
from transformer.model.decoder import Decoder

D_MODEL, N_HEADS, POS = 16, 4, 10
POSITIONALS = ("none", "rotary", "alibi")


def attention(seed: int = 0, dtype: torch.dtype = torch.float32, **overrides: object) -> Attention:
    """An Attention with every parameter (biases too) drawn at a scale that makes patterns sharp
    and far from uniform, so a wrong mask, scale or head layout cannot hide."""
    values: dict[str, object] = dict(d_model=D_MODEL, n_heads=N_HEADS, n_layers=1, n_ctx=16)
    values.update(overrides)
    torch.manual_seed(seed)
    module = Attention(ModelConfig(**values)).to(dtype)  # type: ignore[arg-type]
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0.0, 0.25)
    return module


def twin(module: Attention, path: str) -> Attention:
    """The same weights computing through the other path."""
    other = attention(positional=_positional(module), kernels=path)
    other.load_state_dict(module.state_dict())
    return other


def _positional(module: Attention) -> str:
    return "rotary" if module.rotary is not None else "alibi" if module.alibi is not None else "none"


def inputs(batch: int = 3, pos: int = POS, seed: int = 1, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.randn(batch, pos, D_MODEL, generator=torch.Generator().manual_seed(seed)).to(dtype)


def padding_mask() -> Tensor:
    """True = may be attended to. Row 0 pads nothing; row 1 left-pads two tokens (its queries 0
    and 1 see no key at all); row 2 has holes."""
    mask = torch.ones(3, POS, dtype=torch.bool)
    mask[1, :2] = False
    mask[2, [3, 4, 7]] = False
    return mask


# --- exact agreement with PyTorch -------------------------------------------------------------


def test_equals_torch_multihead_attention_float64() -> None:
    ours = attention(dtype=torch.float64, kernels="readable", positional="none")
    reference = torch_attention(ours)
    x = inputs(dtype=torch.float64)
    expected, expected_pattern = reference(
        x, x, x, attn_mask=causal_float_mask(POS, torch.float64), average_attn_weights=False
    )
    torch.testing.assert_close(ours(x), expected, atol=1e-10, rtol=0)
    q = ours.project(x, ours.W_Q, ours.b_Q)
    k = ours.project(x, ours.W_K, ours.b_K)
    pattern = ours.pattern(q, k, ours.allowed(POS, None, x.device), None)
    torch.testing.assert_close(pattern, expected_pattern, atol=1e-10, rtol=0)


@pytest.mark.parametrize("positional", POSITIONALS)
@pytest.mark.parametrize("padded", [False, True], ids=["no_padding", "padding"])
def test_readable_and_fast_paths_agree_forward_and_backward(positional: str, padded: bool) -> None:
    readable = attention(positional=positional, kernels="readable")
    fast = twin(readable, "fast")
    mask = padding_mask() if padded else None
    weights = inputs(seed=7)  # a random direction to back-propagate, so every output matters
    outputs, grads = [], []
    for module in (readable, fast):
        x = inputs().requires_grad_()
        out = module(x, mask)
        (out * weights).sum().backward()
        outputs.append(out)
        grads.append([x.grad] + [p.grad for p in module.parameters()])
    torch.testing.assert_close(outputs[0], outputs[1], atol=2e-6, rtol=1e-5)
    for readable_grad, fast_grad in zip(grads[0], grads[1], strict=True):
        assert readable_grad is not None and fast_grad is not None
        torch.testing.assert_close(readable_grad, fast_grad, atol=1e-5, rtol=1e-4)


def test_softmax_runs_in_float32_for_bfloat16_parameters() -> None:
    module = attention(dtype=torch.bfloat16, kernels="readable")
    generator = torch.Generator().manual_seed(3)
    q = (torch.randn(2, N_HEADS, POS, D_MODEL // N_HEADS, generator=generator) * 3).bfloat16()
    k = (torch.randn(2, N_HEADS, POS, D_MODEL // N_HEADS, generator=generator) * 3).bfloat16()
    allowed = torch.ones(POS, POS, dtype=torch.bool).tril()[None, None]
    pattern = module.pattern(q, k, allowed, None)
    assert pattern.dtype == torch.float32
    # A bfloat16 softmax has ~3 significant digits: rows would miss 1 by ~1e-3.
    torch.testing.assert_close(pattern.sum(-1), torch.ones(2, N_HEADS, POS), atol=1e-6, rtol=0)
    exact = module.pattern(q.double(), k.double(), allowed, None)
    torch.testing.assert_close(pattern.double(), exact, atol=1e-6, rtol=0)
    assert module(inputs(dtype=torch.bfloat16)).dtype == torch.bfloat16


@pytest.mark.parametrize("padded", [False, True], ids=["no_padding", "padding"])
@pytest.mark.parametrize("autocast", [True, False], ids=["bf16_autocast", "bf16_parameters"])
def test_fast_path_on_cpu_attends_in_float32_at_low_precision(padded: bool, autocast: bool) -> None:
    """On the CPU the fast path mixes bfloat16 queries, keys and values in float32 (torch's
    bfloat16 attention backward there is several times slower, bench/README.md): its output is
    float32 attention over the same rounded q, k, v, handed back in bfloat16."""
    fast = attention(kernels="fast", dtype=torch.float32 if autocast else torch.bfloat16)
    mask = padding_mask() if padded else None
    x = inputs(dtype=torch.float32 if autocast else torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = fast(x, mask)
        q, k, v = fast._project_qkv_at_once(x, fast.W_Q, fast.W_K, fast.W_V, fast.b_Q, fast.b_K, fast.b_V)
    assert q.dtype == torch.bfloat16 and out.dtype == torch.bfloat16
    allowed = fast.allowed(POS, mask, x.device)
    z = fast._fast_mix(q.float(), k.float(), v.float(), allowed, None, mask)  # float32: autocast is off here
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        expected = fast._write_at_once(z.to(torch.bfloat16))
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    # and it still computes the float32 module's function, to bfloat16's precision
    reference = twin(fast.float(), "readable")(inputs(), mask)
    torch.testing.assert_close(out.float(), reference, atol=0.05, rtol=0.05)


def test_fast_path_gradients_under_bf16_autocast_match_float32() -> None:
    fast = attention(kernels="fast")
    readable = twin(fast, "readable")
    weights = inputs(seed=7)
    grads = []
    for module, autocast in ((fast, True), (readable, False)):
        x = inputs().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = module(x)
        (out.float() * weights).sum().backward()
        grads.append([x.grad] + [p.grad for p in module.parameters()])
    for low, exact in zip(grads[0], grads[1], strict=True):
        assert low is not None and exact is not None
        torch.testing.assert_close(low, exact, atol=0.05, rtol=0.05)


# --- properties --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["readable", "fast"])
@pytest.mark.parametrize("positional", POSITIONALS)
def test_causal_outputs_ignore_later_positions(path: str, positional: str) -> None:
    module = attention(positional=positional, kernels=path)
    x = inputs()
    for t in range(POS - 1):
        changed = x.clone()
        changed[:, t + 1 :] = torch.randn(3, POS - t - 1, D_MODEL)
        before, after = module(x), module(changed)
        torch.testing.assert_close(after[:, : t + 1], before[:, : t + 1], atol=1e-6, rtol=0)
        assert not torch.allclose(after[:, t + 1 :], before[:, t + 1 :], atol=1e-3)


@pytest.mark.parametrize("path", ["readable", "fast"])
@pytest.mark.parametrize("positional", POSITIONALS)
def test_batch_elements_are_independent(path: str, positional: str) -> None:
    module = attention(positional=positional, kernels=path)
    x, mask = inputs(), padding_mask()
    together = module(x, mask)
    for b in range(3):
        alone = module(x[b : b + 1], mask[b : b + 1])
        torch.testing.assert_close(together[b : b + 1], alone, atol=1e-6, rtol=0)


@pytest.mark.parametrize("path", ["readable", "fast"])
@pytest.mark.parametrize("positional", ["none", "alibi"])
def test_fully_masked_queries_give_zero_mix_and_finite_gradients(path: str, positional: str) -> None:
    module = attention(positional=positional, kernels=path)
    mask = padding_mask()
    mask[0] = False  # batch element 0: no key anywhere
    x = inputs().requires_grad_()
    out = module(x, mask)
    assert torch.isfinite(out).all()
    assert module.b_O is not None
    # Nothing to attend to: every head mixes zero, so only the output bias remains.
    torch.testing.assert_close(out[0], module.b_O.expand(POS, D_MODEL), atol=0, rtol=0)
    torch.testing.assert_close(out[1, :2], module.b_O.expand(2, D_MODEL), atol=0, rtol=0)
    out.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert torch.equal(x.grad[0], torch.zeros(POS, D_MODEL))  # masked keys receive no gradient
    for parameter in module.parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all()


@pytest.mark.parametrize(
    "bad_input",
    [
        torch.randn(POS, D_MODEL),  # no batch axis
        torch.randn(2, POS, D_MODEL + 1),  # wrong d_model
        torch.randint(0, 5, (2, POS, D_MODEL)),  # token ids, not vectors
    ],
    ids=["rank", "d_model", "dtype"],
)
def test_wrong_input_shape_or_dtype_raises(bad_input: Tensor) -> None:
    with pytest.raises(TypeCheckError):
        attention()(bad_input)


def test_wrong_padding_mask_raises() -> None:
    module, x = attention(), inputs()
    with pytest.raises(TypeCheckError):
        module(x, torch.ones(3, POS))  # float, not bool
    with pytest.raises(TypeCheckError):
        module(x, torch.ones(3, POS + 1, dtype=torch.bool))  # one key too many


# --- what attention learns ---------------------------------------------------------------------
# On the readable path: the code a learner writes (docs/exercises.md) is the code that learns.
# Each test asserts the mechanism, read off the trained heads' patterns, besides the loss.

K_BACK, VOCAB, SEQ = 3, 16, 16


def k_back_model(positional: str, with_attention: bool) -> Decoder:
    torch.manual_seed(0)
    cfg = ModelConfig(
        d_vocab=VOCAB,
        d_model=32,
        n_heads=2,
        n_layers=1,
        n_ctx=SEQ,
        attn_only=True,
        positional=positional,
        kernels="readable",
    )
    model = Decoder(cfg)
    if not with_attention:
        model.layers = nn.ModuleList()  # embed + positions -> unembed: no position sees another
    return model


def k_back_loss(model: Decoder, tokens: Tensor) -> Tensor:
    logits = model(tokens).logits[:, K_BACK:]
    return F.cross_entropy(logits.flatten(0, 1), tokens[:, :-K_BACK].flatten())


def train_k_back(model: Decoder) -> tuple[float, float]:
    """Returns held-out (accuracy, cross-entropy) for predicting the token K_BACK places back,
    after training on fresh batches."""
    generator = torch.Generator().manual_seed(1)
    train(model, lambda _: k_back_loss(model, uniform_tokens(generator, 64, SEQ, VOCAB)), steps=150, lr=1e-2)
    held_out = uniform_tokens(torch.Generator().manual_seed(99), 512, SEQ, VOCAB)
    with torch.no_grad():
        accuracy = (model(held_out).logits[:, K_BACK:].argmax(-1) == held_out[:, :-K_BACK]).float().mean()
        return float(accuracy), float(k_back_loss(model, held_out))


@pytest.mark.parametrize("positional", ["learned", "rotary"])
def test_attention_moves_a_token_k_positions_forward(positional: str) -> None:
    model = k_back_model(positional, with_attention=True)
    accuracy, loss = train_k_back(model)
    held_out = uniform_tokens(torch.Generator().manual_seed(98), 256, SEQ, VOCAB)
    on_k_back = attention_on_offset(attention_patterns(model, held_out)[0], K_BACK, first_query=K_BACK)
    print(f"k-back {positional}: held-out accuracy {accuracy:.4f}, CE {loss:.4f}, attention on p-k {on_k_back}")
    # The mechanism: one head moves the token, by attending from p to p - k and nowhere else.
    assert float(on_k_back.max()) >= 0.9, f"{positional}: heads' attention on p - {K_BACK}: {on_k_back.tolist()}"
    with pytest.raises(TypeCheckError):  # shape checks paused while training are back on
        model(torch.zeros(1, SEQ))
    assert accuracy >= 0.99, f"{positional}: held-out accuracy {accuracy:.4f} (chance {1 / VOCAB:.4f})"


def test_without_attention_k_back_stays_at_chance() -> None:
    """Control: the same model minus its attention layer sees only the current token and its
    position, both independent of the target, so the best it can do is chance."""
    accuracy, loss = train_k_back(k_back_model("learned", with_attention=False))
    chance = 1 / VOCAB
    print(f"k-back without attention: held-out accuracy {accuracy:.4f} (chance {chance:.4f}), CE {loss:.4f}")
    assert accuracy < 1.5 * chance, f"held-out accuracy {accuracy:.4f} vs chance {chance:.4f}"
    assert loss > 0.97 * math.log(VOCAB), f"held-out CE {loss:.3f} vs ln(d_vocab) {math.log(VOCAB):.3f}"


INDUCTION_VOCAB, SHORTEST_HALF, LONGEST_HALF = 32, 6, 12


@dataclass(frozen=True)
class Induction:
    """Held-out mean losses on the first and the repeated half, each divided by ln(d_vocab)
    (uniform guessing = 1; the first token of the repeat is excluded: nothing announces where
    the repeat starts), and the last layer's best induction score before and after training."""

    first: float
    repeated: float
    score_at_init: float
    score: float


def induction_scores(model: Decoder, tokens: Tensor, half: int) -> Tensor:
    """[n_heads] of the last layer: attention from each token of the repeat to the token after
    its earlier copy (query t, key t - half + 1), averaged over the repeat."""
    return attention_on_offset(attention_patterns(model, tokens)[-1], half - 1, first_query=half)


def induction_losses(n_layers: int, steps: int, seed: int = 0) -> Induction:
    """Trains an attention-only model on repeated halves of varying length and scores it on
    held-out ones of length 9."""
    torch.manual_seed(seed)
    cfg = ModelConfig(
        d_vocab=INDUCTION_VOCAB,
        d_model=32,
        n_heads=2,
        n_layers=n_layers,
        n_ctx=2 * LONGEST_HALF,
        attn_only=True,
        positional="learned",
        kernels="readable",
    )
    model = Decoder(cfg)
    half = 9
    held_out = repeated_halves(torch.Generator().manual_seed(99), 256, half, INDUCTION_VOCAB)
    score_at_init = float(induction_scores(model, held_out, half).max())
    generator = torch.Generator().manual_seed(seed + 1)

    def loss_of_step(_: int) -> Tensor:
        half = int(torch.randint(SHORTEST_HALF, LONGEST_HALF + 1, (), generator=generator))
        return next_token_losses(model, repeated_halves(generator, 64, half, INDUCTION_VOCAB)).mean()

    train(model, loss_of_step, steps=steps, lr=3e-3)
    with torch.no_grad():
        losses = next_token_losses(model, held_out) / math.log(INDUCTION_VOCAB)
    # losses[:, t] predicts token t + 1: first half = targets 1..half-1, repeat = half+1..2*half-1
    score = float(induction_scores(model, held_out, half).max())
    return Induction(float(losses[:, : half - 1].mean()), float(losses[:, half:].mean()), score_at_init, score)


def assert_two_layers_learn_the_repeat_one_cannot(two: Induction, one: Induction) -> None:
    assert two.repeated < 0.1, f"2 layers: repeated-half loss {two.repeated:.3f} ln(V), want < 0.1 ln(V)"
    assert abs(two.first - 1) < 0.05, f"2 layers: first-half loss {two.first:.3f} ln(V), should stay ~ ln(V)"
    assert one.repeated > 0.3, f"1 layer: repeated-half loss {one.repeated:.3f} ln(V), should stay far above 0.1"
    assert abs(one.first - 1) < 0.1, f"1 layer: first-half loss {one.first:.3f} ln(V)"


def test_two_layers_form_an_induction_head_one_layer_cannot() -> None:
    """The mechanism, at seed 0: a head of layer 1 attends from each repeated token to the
    token after its earlier copy (an induction head), which no head of the untrained model does."""
    two = induction_losses(n_layers=2, steps=1000, seed=0)
    one = induction_losses(n_layers=1, steps=1000, seed=0)
    print(f"induction, seed 0: 2 layers {two}; 1 layer {one}")
    assert_two_layers_learn_the_repeat_one_cannot(two, one)
    assert two.score >= 0.9, f"2 layers: best induction score {two.score:.3f}, want >= 0.9"
    assert two.score_at_init <= 0.1, f"untrained: best induction score {two.score_at_init:.3f}, want <= 0.1"


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_two_layers_learn_the_repeat_one_cannot_at_other_seeds(seed: int) -> None:
    """The loss contrast does not hinge on one seed. The circuit can: at seed 1 the 2-layer model
    reaches a repeat loss of 0.009 ln(V) with no induction head (best score 0.024): its layer-1
    heads look 0-3 tokens back and a layer-0 head spreads its attention over the earlier half
    (offsets 6-9). So the induction-head assertion is made where it holds, at seed 0, and this
    test asserts the losses only (docs/interpretability.md discusses circuits that solve the task
    without an induction head)."""
    two = induction_losses(n_layers=2, steps=1000, seed=seed)
    one = induction_losses(n_layers=1, steps=1000, seed=seed)
    print(f"induction, seed {seed}: 2 layers {two}; 1 layer {one}")
    assert_two_layers_learn_the_repeat_one_cannot(two, one)
