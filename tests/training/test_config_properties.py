"""Property tests of config parsing: whatever YAML or `--set` text a user writes, the result is
a config whose every field has its declared type, or a `ConfigError` (one user-error type),
never another exception (a TypeError from a comparison, a yaml error, a KeyError, ...)."""

import math
from dataclasses import fields
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, get_args

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transformer.model.config import ConfigError, ModelConfig
from transformer.routing.config import RoutingConfig
from transformer.training.config import SECTIONS, RunConfig, TrainSettings, load_run_config

CLASSES = {"model": ModelConfig, "routing": RoutingConfig, "train": TrainSettings}
FIELDS = {section: [f.name for f in fields(cls)] for section, cls in CLASSES.items()}

# What YAML can produce, plus the numbers that break naive checks (nan, inf, huge ints, bools).
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["builtin", "char", "rotary", "token", "cpu", "3e-4", "abc", "", "true"]),
)
yaml_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
keys = st.one_of(
    st.sampled_from([(section, name) for section, names in FIELDS.items() for name in names]),
    st.tuples(st.sampled_from(SECTIONS), st.text(max_size=8)),
)


def _holds_declared_type(value: object, annotation: Any) -> bool:
    options = get_args(annotation) if isinstance(annotation, UnionType) else (annotation,)
    return any(
        (kind is NoneType and value is None)
        or (kind is bool and type(value) is bool)
        or (kind is int and type(value) is int)
        or (kind is float and type(value) is float and math.isfinite(value))
        or (kind is str and type(value) is str)
        for kind in options
    )


def _assert_well_typed(config: RunConfig) -> None:
    """The mechanism, not just "no crash": every field of a config that was accepted holds a
    value of its declared type (bools bools, ints not bools, floats finite floats)."""
    for section, part in (("model", config.model), ("routing", config.routing), ("train", config.train)):
        if part is None:
            continue
        for field in fields(part):
            value = getattr(part, field.name)
            assert _holds_declared_type(value, field.type), f"{section}.{field.name}={value!r}"


@settings(max_examples=150, deadline=None, derandomize=True)
@given(key=keys, value=yaml_values)
def test_any_value_for_any_key_gives_a_typed_config_or_a_config_error(key: tuple[str, str], value: object) -> None:
    section, name = key
    try:
        config = RunConfig.from_dict({section: {name: value}})
    except ConfigError:
        return
    _assert_well_typed(config)


@settings(max_examples=80, deadline=None, derandomize=True)
@given(key=keys, raw=st.text(max_size=20))
def test_any_set_string_gives_a_typed_config_or_a_config_error(key: tuple[str, str], raw: str) -> None:
    section, name = key
    try:
        config = load_run_config(None, [f"{section}.{name}={raw}"])
    except ConfigError:
        return
    _assert_well_typed(config)


@settings(max_examples=50, deadline=None, derandomize=True)
@given(assignment=st.text(max_size=30))
def test_any_assignment_at_all_gives_a_typed_config_or_a_config_error(assignment: str) -> None:
    try:
        config = load_run_config(None, [assignment])
    except ConfigError:
        return
    _assert_well_typed(config)


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    document=st.one_of(
        st.binary(max_size=60),
        st.text(max_size=60).map(str.encode),
        st.dictionaries(st.sampled_from([*SECTIONS, "other"]), yaml_values, max_size=3).map(
            lambda body: repr(body).encode()  # Python's repr of plain data is mostly YAML flow style
        ),
    )
)
def test_any_file_content_gives_a_typed_config_or_a_config_error(tmp_path: Path, document: bytes) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(document)
    try:
        config = load_run_config(path)
    except ConfigError:
        return
    _assert_well_typed(config)
