"""`ModelConfig`: every size and choice of a decoder, checked before any tensor is made.

A wrong config should fail here, with the field's name and the fix, not three modules later
inside an einsum with a shape error.
"""

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from transformer.errors import UserError
from transformer.model.field_types import check_field_types, checked_values

POSITIONAL_CHOICES = ("learned", "sinusoidal", "rotary", "alibi", "none")
NORM_CHOICES = ("layernorm", "rmsnorm")
MLP_CHOICES = ("gelu", "gelu_tanh", "swiglu")
KERNEL_CHOICES = ("readable", "fast")

# Keys a config (YAML, --set, a checkpoint) may still hold from before a rename, and their names now.
RENAMED = {"attention": "kernels", "rotate_dim": "rotary_dim"}


class ConfigError(UserError, ValueError):
    """A config value that cannot work; the message names the field and how to fix it."""


@dataclass(frozen=True)
class ModelConfig:
    """Sizes left as None are derived in `__post_init__`, so every reader sees the int a
    decoder is built with (and `to_dict` records it), never a None to resolve again.

    Derived sizes are fixed at construction: `dataclasses.replace(cfg, d_model=...)` keeps the
    old d_head and d_mlp; build a new config from the given values to derive them afresh.
    """

    d_vocab: int | None = None  # None: not known yet (RunConfig.with_vocab fills in the tokenizer's size)
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 4
    n_ctx: int = 256
    d_head: int = None  # type: ignore[assignment]  # None: d_model // n_heads
    d_mlp: int = None  # type: ignore[assignment]  # None: 4 * d_model
    positional: str = "learned"
    rotary_dim: int = None  # type: ignore[assignment]  # None: all of d_head with rotary, else 0
    rope_base: float = 10_000.0
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    mlp: str = "gelu"
    attn_only: bool = False
    kernels: str = "fast"  # "readable" or "fast" (PyTorch's fused attention, norm and GELU: same functions)
    causal: bool = True  # False: every position sees every other (images, diffusion: transformer/vision)
    bias: bool = True
    tie_embeddings: bool = False
    dropout: float = 0.0
    init_std: float = 0.02

    def __post_init__(self) -> None:
        check_field_types(self, "model")
        for name in ("d_model", "n_heads", "n_layers", "n_ctx"):
            _require_positive(name, getattr(self, name))
        for name in ("d_vocab", "d_head", "d_mlp"):
            value = getattr(self, name)
            if value is not None:
                _require_positive(name, value)
        if self.d_head is None and self.d_model % self.n_heads != 0:
            raise ConfigError(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}: choose "
                f"d_model a multiple of n_heads (e.g. {self.n_heads * max(1, self.d_model // self.n_heads)}), "
                "or set d_head explicitly"
            )
        _require_choice("positional", self.positional, POSITIONAL_CHOICES)
        _require_choice("norm", self.norm, NORM_CHOICES)
        _require_choice("mlp", self.mlp, MLP_CHOICES)
        _require_choice("kernels", self.kernels, KERNEL_CHOICES)
        if self.d_head is None:
            object.__setattr__(self, "d_head", self.d_model // self.n_heads)
        if self.d_mlp is None:
            object.__setattr__(self, "d_mlp", 4 * self.d_model)
        self._resolve_rotary_dim()
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout={self.dropout} must be in [0, 1): e.g. 0.0 or 0.1")
        if not self.norm_eps >= 0.0:
            raise ConfigError(f"norm_eps={self.norm_eps} must be >= 0: e.g. 1e-5")
        if not self.init_std > 0.0:
            raise ConfigError(f"init_std={self.init_std} must be > 0: GPT-2 uses 0.02")

    def _resolve_rotary_dim(self) -> None:
        """Without rotary positions no dimension turns, so the derived value is 0, and 0 is the
        one value such a config may give (a saved config round-trips)."""
        if self.positional != "rotary":
            if self.rotary_dim not in (None, 0):
                raise ConfigError(
                    f"rotary_dim={self.rotary_dim} only applies to positional='rotary' "
                    f"(got positional={self.positional!r}): remove rotary_dim or use rotary"
                )
            object.__setattr__(self, "rotary_dim", 0)
        elif self.rotary_dim is None:
            object.__setattr__(self, "rotary_dim", self.d_head)
        else:
            _require_positive("rotary_dim", self.rotary_dim)
            if self.rotary_dim % 2 or self.rotary_dim > self.d_head:
                raise ConfigError(
                    f"rotary_dim={self.rotary_dim} must be even and at most d_head={self.d_head}: "
                    f"rotary turns pairs of dimensions, e.g. rotary_dim={self.d_head}"
                )

    @property
    def residual_out_std(self) -> float:
        """GPT-2: projections that write into the residual stream start smaller, so the
        stream's variance does not grow with depth (two writes per layer)."""
        return self.init_std / math.sqrt(2 * self.n_layers)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
        for old, new in RENAMED.items():
            if old in values:
                value = "null" if values[old] is None else values[old]
                raise ConfigError(f"model.{old} was renamed model.{new}: write {new}: {value}")
        return cls(**checked_fields(cls, values, "ModelConfig field", "model"))


def checked_fields(cls: type, values: dict[str, Any], what: str, section: str) -> dict[str, Any]:
    """The values for a config dataclass: every key must be one of its fields (a misspelling
    is an error listing the valid ones, never silently ignored), floats made floats, and
    every value of its field's type (`field_types`), checked before the dataclass is made."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown {what}(s) {unknown}: valid {what}s are {sorted(known)}")
    return checked_values(cls, coerce_floats(cls, values), section)


def coerce_floats(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """YAML reads `3e-4` as a string (its floats need a dot): give float fields the number such
    a string spells, so configs can be written the way people write numbers. Text that is no
    number stays text, for `checked_values` to refuse with the key's name."""
    float_fields = {f.name for f in fields(cls) if f.type in (float, float | None)}
    coerced = dict(values)
    for name in float_fields & set(values):
        value = values[name]
        if isinstance(value, str):
            try:
                coerced[name] = float(value)
            except ValueError:
                pass
    return coerced


def _require_positive(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name}={value!r} must be a positive integer")


def _require_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {list(choices)}")
