"""A config that cannot work fails at construction, and the error names the field to fix."""

import pytest
import torch
from jaxtyping import TypeCheckError

from transformer.model.config import ConfigError, ModelConfig
from transformer.model.decoder import Decoder


def test_defaults_are_valid_and_derived_sizes_follow() -> None:
    cfg = ModelConfig(d_model=128, n_heads=4)
    assert (cfg.head_dim, cfg.mlp_dim, cfg.rotary_dim) == (32, 512, 32)
    assert ModelConfig(d_model=10, n_heads=3, d_head=4).head_dim == 4  # explicit d_head: no divisibility


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_d_model_not_divisible_by_n_heads() -> None:
    with pytest.raises(ConfigError, match=r"d_model=10 is not divisible by n_heads=3"):
        ModelConfig(d_model=10, n_heads=3)


@pytest.mark.parametrize("field", ["d_vocab", "d_model", "n_heads", "n_layers", "n_ctx", "d_head", "d_mlp"])
@pytest.mark.parametrize("value", [0, -4, True])
def test_sizes_must_be_positive_integers(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"^{field}=.* must be a positive integer"):
        ModelConfig(**{field: value})  # type: ignore[arg-type]


def test_float_size_is_refused() -> None:
    """A size read as 64.0 (say from YAML) is refused: under the test suite's runtime checks by
    the `int` annotation itself, without them by the same positive-integer rule."""
    with pytest.raises((ConfigError, TypeCheckError), match="d_model"):
        ModelConfig(d_model=64.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value"),
    [("positional", "absolute"), ("norm", "batchnorm"), ("mlp", "relu"), ("attention", "flash")],
)
def test_unknown_choice_names_the_field_and_the_choices(field: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{field}='{value}' is not one of \["):
        ModelConfig(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("rotate_dim", [3, 34, 0])
def test_rotate_dim_must_be_even_positive_and_within_d_head(rotate_dim: int) -> None:
    with pytest.raises(ConfigError, match=rf"^rotate_dim={rotate_dim}"):
        ModelConfig(d_model=128, n_heads=4, positional="rotary", rotate_dim=rotate_dim)
    assert ModelConfig(d_model=128, n_heads=4, positional="rotary", rotate_dim=16).rotary_dim == 16


@pytest.mark.parametrize("positional", ["learned", "sinusoidal", "alibi", "none"])
def test_rotate_dim_needs_rotary_positions(positional: str) -> None:
    with pytest.raises(ConfigError, match=r"^rotate_dim=8 only applies to positional='rotary'"):
        ModelConfig(positional=positional, rotate_dim=8)


@pytest.mark.parametrize(
    ("field", "value"),
    [("dropout", 1.0), ("dropout", -0.1), ("norm_eps", -1e-5), ("init_std", 0.0)],
)
def test_out_of_range_floats(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=rf"^{field}="):
        ModelConfig(**{field: value})  # type: ignore[arg-type]


def test_dict_round_trip_and_unknown_fields() -> None:
    cfg = ModelConfig(d_vocab=50, positional="rotary", rotate_dim=16, tie_embeddings=True)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match=r"unknown ModelConfig field\(s\) \['d_modle'\]"):
        ModelConfig.from_dict({**cfg.to_dict(), "d_modle": 64})


def test_explicit_d_head_builds_a_working_decoder() -> None:
    """d_head need not be d_model / n_heads: heads project down to d_head and W_O back up."""
    model = Decoder(ModelConfig(d_vocab=11, d_model=10, n_heads=3, d_head=4, n_layers=1, n_ctx=8))
    assert model.layers[0].attn.W_Q.shape == (3, 10, 4)
    assert model(torch.zeros(2, 8, dtype=torch.long)).logits.shape == (2, 8, 11)
