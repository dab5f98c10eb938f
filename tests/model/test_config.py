"""A config that cannot work fails at construction, and the error names the field to fix."""

from typing import cast

import pytest
import torch
from jaxtyping import TypeCheckError

from transformer.model.config import ConfigError, ModelConfig
from transformer.model.decoder import Decoder
from transformer.model.layer import TransformerLayer


def test_defaults_are_valid_and_derived_sizes_are_resolved_at_construction() -> None:
    cfg = ModelConfig(d_model=128, n_heads=4, positional="rotary")
    assert (cfg.d_head, cfg.d_mlp, cfg.rotary_dim) == (32, 512, 32)
    assert ModelConfig(d_model=96, n_heads=3).d_head == 32 and ModelConfig(d_model=96).d_mlp == 384
    assert ModelConfig(d_model=10, n_heads=3, d_head=4).d_head == 4  # explicit d_head: no divisibility
    assert ModelConfig(d_model=64, n_heads=4, d_head=8, positional="rotary").rotary_dim == 8  # all of d_head
    assert ModelConfig(d_model=64, d_mlp=100).d_mlp == 100
    assert ModelConfig(positional="learned").rotary_dim == 0  # nothing rotates without rotary positions


def test_a_config_that_gives_none_derives_the_size() -> None:
    given = ModelConfig.from_dict({"d_model": 64, "n_heads": 2, "d_head": None, "d_mlp": None, "rotary_dim": None})
    assert (given.d_head, given.d_mlp, given.rotary_dim) == (32, 256, 0)
    assert given == ModelConfig(d_model=64, n_heads=2)
    assert ModelConfig.from_dict({"positional": "rotary", "rotary_dim": None}).rotary_dim == 32


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_d_model_not_divisible_by_n_heads() -> None:
    with pytest.raises(ConfigError, match=r"d_model=10 is not divisible by n_heads=3"):
        ModelConfig(d_model=10, n_heads=3)


@pytest.mark.parametrize("field", ["d_vocab", "d_model", "n_heads", "n_layers", "n_ctx", "d_head", "d_mlp"])
@pytest.mark.parametrize("value", [0, -4, True])
def test_sizes_must_be_positive_integers(field: str, value: object) -> None:
    """A bool is refused by its type (naming the section), 0 and -4 by their range."""
    with pytest.raises(ConfigError, match=rf"^(model\.)?{field}=.* must be an? (positive )?integer"):
        ModelConfig(**{field: value})  # type: ignore[arg-type]


def test_float_size_is_refused() -> None:
    """A size read as 64.0 (say from YAML) is refused: under the test suite's runtime checks by
    the `int` annotation itself, without them by the same positive-integer rule."""
    with pytest.raises((ConfigError, TypeCheckError), match="d_model"):
        ModelConfig(d_model=64.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value"),
    [("positional", "absolute"), ("norm", "batchnorm"), ("mlp", "relu"), ("kernels", "flash")],
)
def test_unknown_choice_names_the_field_and_the_choices(field: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{field}='{value}' is not one of \["):
        ModelConfig(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("rotary_dim", [3, 34, 0, -2])
def test_rotary_dim_must_be_even_positive_and_within_d_head(rotary_dim: int) -> None:
    with pytest.raises(ConfigError, match=rf"^rotary_dim={rotary_dim}"):
        ModelConfig(d_model=128, n_heads=4, positional="rotary", rotary_dim=rotary_dim)
    assert ModelConfig(d_model=128, n_heads=4, positional="rotary", rotary_dim=16).rotary_dim == 16


@pytest.mark.parametrize("positional", ["learned", "sinusoidal", "alibi", "none"])
def test_rotary_dim_needs_rotary_positions(positional: str) -> None:
    with pytest.raises(ConfigError, match=r"^rotary_dim=8 only applies to positional='rotary'"):
        ModelConfig(positional=positional, rotary_dim=8)


@pytest.mark.parametrize(
    ("old", "value", "message"),
    [
        ("attention", "readable", "model.attention was renamed model.kernels: write kernels: readable"),
        ("rotate_dim", 16, "model.rotate_dim was renamed model.rotary_dim: write rotary_dim: 16"),
    ],
)
def test_a_renamed_key_is_an_error_naming_its_new_name(old: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ModelConfig.from_dict({"positional": "rotary", old: value})
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("field", "value"),
    [("dropout", 1.0), ("dropout", -0.1), ("norm_eps", -1e-5), ("init_std", 0.0)],
)
def test_out_of_range_floats(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=rf"^{field}="):
        ModelConfig(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("positional", ["rotary", "learned"])
def test_dict_round_trip_and_unknown_fields(positional: str) -> None:
    cfg = ModelConfig(d_vocab=50, positional=positional, d_mlp=100, tie_embeddings=True, kernels="readable")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert ModelConfig.from_dict(ModelConfig(d_vocab=50, positional="rotary", rotary_dim=16).to_dict()).rotary_dim == 16
    with pytest.raises(ConfigError, match=r"unknown ModelConfig field\(s\) \['d_modle'\]"):
        ModelConfig.from_dict({**cfg.to_dict(), "d_modle": 64})


def test_explicit_d_head_builds_a_working_decoder() -> None:
    """d_head need not be d_model / n_heads: heads project down to d_head and W_O back up."""
    model = Decoder(ModelConfig(d_vocab=11, d_model=10, n_heads=3, d_head=4, n_layers=1, n_ctx=8))
    assert cast(TransformerLayer, model.layers[0]).attn.W_Q.shape == (3, 10, 4)
    assert model(torch.zeros(2, 8, dtype=torch.long)).logits.shape == (2, 8, 11)


def test_a_decoder_needs_d_vocab() -> None:
    assert ModelConfig().d_vocab is None  # a run config fills it from the tokenizer
    with pytest.raises(ConfigError, match=r"^model.d_vocab is not set: give it, or fill in the tokenizer's size"):
        Decoder(ModelConfig(n_layers=1))
