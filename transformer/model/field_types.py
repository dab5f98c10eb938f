"""Every value of a config dataclass checked against the type its field declares.

YAML and `--set` hand over whatever they parsed, and Python's truthiness would accept all of
it: `attn_only: abc` (a string) would build an attention-only model, `lr: true` would train at
lr 1.0, `data: 5` would fail deep inside the data loader. So each config class calls
`check_field_types` first thing in `__post_init__`, and every way in (YAML, `--set`, a
checkpoint's config, Python code) meets the same rules.

The rules are pydantic's strict mode, not hand-written ones: a bool is only true or false, an
int is never a bool or a float, a float takes an int (1 -> 1.0) but not a bool or a string, a
string is never a number, and `int | None` means what it says. pydantic knows these rules for
any annotation; our code only words the message: one line naming the key, what it must be and
what it got, like every other `ConfigError`. Non-finite floats (`.nan`, `.inf`) are refused too,
since no config float means anything at infinity, and `nan` slips past every `<`/`>` range check.
"""

from dataclasses import MISSING, fields
from functools import cache
from types import NoneType, UnionType
from typing import TYPE_CHECKING, Any, Union, get_args, get_origin

if TYPE_CHECKING:
    from pydantic import TypeAdapter

INT_LIMIT = 2**63  # what an int64 tensor, a seed or a size can hold
_WHAT = {
    bool: "true or false",
    int: "an integer",
    float: "a finite number",
    str: "a string (in YAML, quote text that looks like a number or a bool: '5', 'true')",
}


def check_field_types(config: Any, section: str) -> None:
    """Raise a `ConfigError` naming `section.field` for the first value of the wrong type;
    ints given for float fields become floats. For `__post_init__`: Python callers meet the
    same rules as YAML."""
    values = {field.name: getattr(config, field.name) for field in fields(config)}
    for name, checked in checked_values(type(config), values, section).items():
        if type(checked) is not type(values[name]):
            object.__setattr__(config, name, checked)


def checked_values(cls: type, values: dict[str, Any], section: str) -> dict[str, Any]:
    """`values` (field name -> value, every name a field of the dataclass `cls`) checked
    against the field types, before the dataclass is made; ints for floats made floats. A
    None is allowed where the field's default is None (a size derived in `__post_init__`)."""
    from pydantic import ValidationError

    from transformer.model.config import ConfigError

    declared = {field.name: field for field in fields(cls)}
    checked = dict(values)
    for name, value in values.items():
        field = declared[name]
        if value is None and field.default is None and field.default_factory is MISSING:
            continue
        try:
            result = _adapter(field.type).validate_python(value)  # type: ignore[arg-type]  # types hash
        except ValidationError:
            raise ConfigError(f"{section}.{name}={_shown(value)} must be {describe(field.type)}") from None
        if isinstance(result, int) and not isinstance(result, bool) and not -INT_LIMIT < result < INT_LIMIT:
            raise ConfigError(f"{section}.{name}={result} is too large (at most {INT_LIMIT - 1})")
        checked[name] = result
    return checked


def describe(annotation: Any) -> str:
    """What a value of this annotation is, in words: `int | None` -> "an integer or null"."""
    if get_origin(annotation) in (Union, UnionType):
        words = [describe(arg) for arg in get_args(annotation) if arg is not NoneType]
        if NoneType in get_args(annotation):
            words.append("null")
        return " or ".join(words)
    return _WHAT.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _shown(value: object) -> str:
    """The value as Python shows it and its kind, short enough for one line: `'abc' (a string)`."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    kind = {bool: "a bool", int: "an integer", float: "a number", str: "a string", NoneType: "null"}.get(
        type(value), f"a {type(value).__name__}"
    )
    return f"{text} ({kind})"


@cache
def _adapter(annotation: Any) -> "TypeAdapter[Any]":
    """One validator per annotation, built once (building one takes milliseconds, using it microseconds)."""
    from pydantic import ConfigDict, TypeAdapter

    return TypeAdapter(annotation, config=ConfigDict(strict=True, allow_inf_nan=False))
