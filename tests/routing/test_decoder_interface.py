"""Both decoders answer the same questions (`DecoderEnds`), each with its own answer, so no
caller needs to know which one it holds: the plain decoder's answers are the defaults, the
routed decoder's come from its routing config, its router and its pool."""

import pytest
import torch
from torch import Tensor

from tests.helpers.routed_models import tiny_config
from transformer.analysis.describe import describe
from transformer.errors import UserError
from transformer.model.decoder import Decoder, DecoderOutput
from transformer.routing.config import RoutingConfig
from transformer.routing.decoder import NotRoutedError, RoutedDecoder, RoutingInfo, as_routed
from transformer.routing.router import temperature_after, temperature_at

POOL, PREFIX = 4, 5  # tiny_config: n_layers = 3 steps, n_ctx = 12, d_vocab = 23


def plain() -> Decoder:
    torch.manual_seed(0)
    return Decoder(tiny_config())


def routed(**routing: object) -> RoutedDecoder:
    torch.manual_seed(0)
    config = RoutingConfig(pool_size=POOL, route_prefix_len=PREFIX, **routing)  # type: ignore[arg-type]
    model = RoutedDecoder(tiny_config(), config)
    with torch.no_grad():  # a router with opinions: sequences take different routes
        model.router.W_R.normal_(0.0, 3.0, generator=torch.Generator().manual_seed(1))
    return model


def tokens(batch: int = 16, seed: int = 2) -> Tensor:
    return torch.randint(0, 23, (batch, 12), generator=torch.Generator().manual_seed(seed))


# --- the output ------------------------------------------------------------------------------


def test_the_plain_decoder_returns_logits_and_nothing_else() -> None:
    output = plain()(tokens())
    assert isinstance(output, DecoderOutput)
    assert output.logits.shape == (16, 12, 23)
    assert output.routing is None and output.aux_loss is None


def test_the_routed_decoder_returns_its_routing_info_and_owes_its_aux_loss() -> None:
    output = routed().train()(tokens())
    assert isinstance(output, DecoderOutput) and isinstance(output.routing, RoutingInfo)
    assert output.logits.shape == (16, 12, 23)
    assert output.routing.layer_choices.shape == (16, 3)
    assert output.aux_loss is not None and float(output.aux_loss.detach()) > 0
    assert torch.equal(output.aux_loss, output.routing.aux_loss)


def test_describe_shows_the_logits_and_the_routing_report_of_a_forward() -> None:
    rows = {
        kind: describe(model, tokens()).splitlines()[2] for kind, model in [("plain", plain()), ("routed", routed())]
    }
    shape = str([16, 12, 23])
    assert rows["plain"].startswith("(model)") and f"  {shape}  " in rows["plain"] and "Routing" not in rows["plain"]
    assert rows["routed"].startswith("(model)") and f"  ({shape}, RoutingInfo)  " in rows["routed"]


# --- what each kind answers ------------------------------------------------------------------


def test_kind_and_shape_of_each_decoder() -> None:
    assert (Decoder.kind, RoutedDecoder.kind) == ("plain", "routed")
    assert (plain().kind, routed().kind) == ("plain", "routed")
    assert plain().n_steps == routed().n_steps == 3
    assert (plain().pool_size, routed().pool_size) == (1, POOL)


def test_the_routed_decoder_scores_and_generates_from_its_routing_prefix_on() -> None:
    assert (plain().first_scored_target, routed().first_scored_target) == (0, PREFIX)
    assert (plain().min_prompt_len, routed().min_prompt_len) == (1, PREFIX)


def test_a_routed_token_multiplies_by_k_of_the_n_pool_layers() -> None:
    """With N = 2K pool layers a token runs half of them: the weights of a K-layer plain
    decoder, plus the router's. Embedding tables are lookups and never count."""
    torch.manual_seed(0)
    layers = Decoder(tiny_config(n_layers=2))
    pool = RoutedDecoder(tiny_config(n_layers=2), RoutingConfig(pool_size=4, route_prefix_len=PREFIX))
    lookups = layers.embed.W_E.numel() + layers.cfg.n_ctx * layers.cfg.d_model  # W_E, learned W_pos
    assert layers.active_parameters() == sum(p.numel() for p in layers.parameters()) - lookups
    router = sum(p.numel() for p in pool.router.parameters())
    assert pool.active_parameters() == layers.active_parameters() + router
    assert pool.active_parameters() < sum(p.numel() for p in pool.parameters()) - lookups


def test_the_training_schedule_sets_the_routers_temperature_and_nothing_in_a_plain_decoder() -> None:
    model = routed(temperature_start=2.0, temperature_end=0.5)
    model.set_training_step(30, 100)
    assert model.router.temperature == temperature_at(model.routing, 30, 100) and model.router.temperature < 2.0
    model.set_trained_steps(30, 100)
    assert model.router.temperature == temperature_after(model.routing, 30, 100)
    assert model.router.temperature != temperature_at(model.routing, 30, 100)  # the update that made step 30
    decoder, batch = plain().eval(), tokens()
    before = {name: value.clone() for name, value in decoder.state_dict().items()}
    expected = decoder(batch).logits
    decoder.set_training_step(30, 100)
    decoder.set_trained_steps(30, 100)
    assert all(torch.equal(value, before[name]) for name, value in decoder.state_dict().items())
    assert torch.equal(decoder(batch).logits, expected)


def test_a_counting_window_accumulates_routed_counts_and_is_empty_for_a_plain_decoder() -> None:
    model, first, second = routed().train(), tokens(seed=3), tokens(seed=4)
    with model.counting_window():
        model(first)
        together = model(second).routing
    alone = model(second).routing
    assert float(together.counts.sum()) == 2 * float(alone.counts.sum())
    decoder = plain()
    with decoder.counting_window():
        inside = decoder(first).logits
    assert torch.equal(inside, decoder(first).logits)


def test_the_route_stream_is_seeded_saved_and_restored_and_a_plain_decoder_has_none() -> None:
    model = routed(seed=11).train()
    asked: list[int] = []

    def derive(seed: int) -> int:
        asked.append(seed)
        return seed + 1000

    model.seed_route_rng(derive)
    assert asked == [11]
    assert torch.equal(model.route_rng_state(), torch.Generator().manual_seed(1011).get_state())
    saved = model.route_rng_state()
    first = model(tokens()).routing.layer_choices
    assert not torch.equal(model.route_rng_state(), saved)  # training draws consumed the stream
    model.set_route_rng_state(saved)
    assert torch.equal(model(tokens()).routing.layer_choices, first)

    decoder = plain()
    decoder.seed_route_rng(derive)
    assert asked == [11], "a plain decoder has no routing seed to derive from"
    assert decoder.route_rng_state() is None
    decoder.set_route_rng_state(None)


def test_a_training_log_record_carries_the_routed_metrics_of_the_last_forward() -> None:
    model = routed().train()
    model.set_training_step(10, 100)
    output = model(tokens())
    info = output.routing
    metrics = model.training_metrics(output)
    assert list(metrics) == ["usage_entropy", "decision_entropy", "usage", "temperature"]
    assert metrics["usage_entropy"] == float(info.usage_entropy)
    assert metrics["decision_entropy"] == float(info.decision_entropy)
    assert metrics["usage"] == (info.counts / info.counts.sum(-1, keepdim=True)).tolist()
    assert metrics["temperature"] == temperature_at(model.routing, 10, 100)
    decoder = plain()
    assert decoder.training_metrics(decoder(tokens())) == {}


def test_sampled_routes_repeat_for_a_seed_and_leave_the_training_stream_alone() -> None:
    model = routed().eval()
    own = model.route_rng_state()
    with model.sampled_routes(seed=5):
        first = model(tokens()).routing.layer_choices
    with model.sampled_routes(seed=5):
        again = model(tokens()).routing.layer_choices
    argmax = model(tokens()).routing.layer_choices
    assert torch.equal(first, again) and not torch.equal(first, argmax)
    assert torch.equal(model.route_rng_state(), own) and not model.training
    with pytest.raises(ValueError, match="sampled routes need a routed decoder"):
        with plain().sampled_routes(seed=5):
            pass


def test_as_routed_types_a_routed_decoder_and_refuses_a_plain_one_in_one_line() -> None:
    model = routed()
    assert as_routed(model) is model
    with pytest.raises(NotRoutedError) as refused:
        as_routed(plain(), "a route table")
    assert isinstance(refused.value, UserError)
    message = str(refused.value)
    assert message.startswith("a route table needs a sequence-routed decoder") and "\n" not in message
    assert message.endswith("(config routing: null)")
    from tests.helpers.token_models import token_model

    with pytest.raises(NotRoutedError, match=r"not a TokenRoutedDecoder$"):  # no claim that routing is null
        as_routed(token_model(), "a route table")


def test_what_a_route_decision_covers_its_temperature_and_choices_per_step() -> None:
    """So eval and routes ask the decoder instead of checking its class."""
    from tests.helpers.token_models import token_model
    from transformer.routing.token_decoder import as_token_routed

    token = token_model(skip=True)
    sequence = routed()
    sequence.router.temperature = 0.7
    token.router.temperature = 0.3
    assert (plain().route_granularity, sequence.route_granularity, token.route_granularity) == (
        None,
        "sequence",
        "token",
    )
    assert (plain().route_temperature, sequence.route_temperature, token.route_temperature) == (None, 0.7, 0.3)
    assert (plain().choices_per_step, sequence.choices_per_step, token.choices_per_step) == (1, POOL, 3 + 1)
    assert plain().applied_counts(None) is None and plain().work_metrics(torch.ones(2, 1), torch.ones(2, 1)) == {}
    assert as_token_routed(token) is token
    with pytest.raises(NotRoutedError, match="needs a token-routed decoder, not a RoutedDecoder"):
        as_token_routed(sequence)
