"""Token routing is a config choice: `routing.granularity: token` builds the token-routed
decoder; sequence routing stays the default and unchanged; a bad token-level value is a
one-line error that names the field and the fix."""

from pathlib import Path

import pytest

from transformer.errors import UserError
from transformer.model.config import ConfigError
from transformer.routing.config import RoutingConfig
from transformer.routing.decoder import RoutedDecoder
from transformer.routing.token_decoder import TokenRoutedDecoder
from transformer.training.config import RunConfig, build_model, load_run_config

CONFIGS = Path(__file__).parent.parent.parent / "configs"


def test_the_shipped_token_config_builds_a_token_routed_decoder_like_tiny_routed() -> None:
    token = load_run_config(CONFIGS / "tiny-token-routed.yaml").with_vocab(50)
    sequence = load_run_config(CONFIGS / "tiny-sequence-routed.yaml").with_vocab(50)
    assert token.routing is not None and sequence.routing is not None
    assert (token.routing.granularity, token.routing.token_attention, token.routing.capacity_factor) == (
        "token",
        "all",
        1.25,
    )
    assert token.model == sequence.model and token.routing.pool_size == sequence.routing.pool_size
    assert token.train.max_steps == sequence.train.max_steps
    model = build_model(token)
    assert isinstance(model, TokenRoutedDecoder) and model.kind == "routed"
    assert (model.first_scored_target, model.min_prompt_len, model.pool_size) == (0, 1, 6)
    assert isinstance(build_model(sequence), RoutedDecoder)
    assert RoutingConfig().granularity == "sequence"


def test_token_fields_set_from_the_command_line_round_trip() -> None:
    config = load_run_config(
        None,
        [
            "routing.granularity=token",
            "routing.token_attention=co_routed",
            "routing.capacity_factor=null",
            "routing.skip=true",
            "routing.compute_weight=1e-2",
        ],
    )
    routing = config.routing
    assert routing is not None
    assert (routing.token_attention, routing.capacity_factor, routing.skip, routing.compute_weight) == (
        "co_routed",
        None,
        True,
        0.01,
    )
    assert routing.n_entries == routing.pool_size + 1
    assert RunConfig.from_dict(config.to_dict()) == config
    assert load_run_config(None, ["routing.granularity=token", "routing.capacity_factor=2"]).routing == RoutingConfig(
        **{**load_run_config(None).routing.to_dict(), "granularity": "token", "capacity_factor": 2.0}  # type: ignore[union-attr]
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["routing.granularity=tokens"], r"granularity='tokens' is not one of \['sequence', 'token'\]"),
        (["routing.granularity=token", "routing.token_attention=local"], r"token_attention='local' is not one of"),
        (["routing.granularity=token", "routing.capacity_factor=0"], r"capacity_factor=0.0 must be > 0"),
        (["routing.granularity=token", "routing.capacity_factor=-1.5"], r"capacity_factor=-1.5 must be > 0"),
        (
            ["routing.granularity=token", "routing.capacity_factor=lots"],
            r"routing.capacity_factor='lots' \(a string\) must be a finite number or null",
        ),
        (["routing.granularity=token", "routing.skip=true", "routing.compute_weight=-1"], r"compute_weight=-1.0"),
        (["routing.granularity=token", "routing.compute_weight=0.1"], r"compute_weight=0.1 needs skip: true"),
        (["routing.skip=true"], r"skip, compute_weight and reward apply to token routing only: set granularity: token"),
        (["routing.reward=readout"], r"skip, compute_weight and reward apply to token routing only"),
        (
            ["routing.granularity=token", "routing.reward=exact"],
            r"reward='exact' is not one of \['first_order', 'readout'\]",
        ),
    ],
)
def test_bad_token_routing_values_are_one_line_errors_that_say_what_to_do(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        load_run_config(CONFIGS / "tiny-sequence-routed.yaml", overrides)
    assert isinstance(raised.value, UserError) and "\n" not in str(raised.value)


def test_per_step_token_pools_need_a_pool_that_divides_among_the_steps() -> None:
    config = load_run_config(None, ["routing.granularity=token", "routing.pools=per_step", "routing.pool_size=4"])
    assert config.routing is not None and config.model.n_layers == 3
    with pytest.raises(ConfigError, match="pools='per_step' needs pool_size=4 to be a multiple of the 3 routing steps"):
        TokenRoutedDecoder(config.with_vocab(50).model, config.routing)


def test_the_token_decoder_refuses_a_sequence_config() -> None:
    config = load_run_config(CONFIGS / "tiny-sequence-routed.yaml").with_vocab(50)
    assert config.routing is not None
    with pytest.raises(ConfigError, match="needs routing.granularity='token'"):
        TokenRoutedDecoder(config.model, config.routing)
