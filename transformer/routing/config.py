"""`RoutingConfig`: what the routed decoder adds to a `ModelConfig`.

The routed decoder applies `ModelConfig.n_layers` layers (its depth, K routing steps), each
chosen from a pool of `pool_size` layers (N). With N = K and the route forced to step k ->
layer k, it is exactly the plain decoder.

`granularity` says who chooses: each sequence, from its routing prefix (transformer/routing/decoder.py),
or each token, from its own residual (transformer/routing/token_decoder.py). The token-level fields
(`token_attention`, `capacity_factor`, `skip`, `compute_weight`, `reward`) mean nothing to a
sequence-routed decoder; `skip`, `compute_weight` and `reward` are refused there rather than
silently ignored. `pools` and `warm_start_steps` mean the same at both granularities: with
`granularity: token`, `pools: per_step`, `pool_size` = K and `skip: true`, step k chooses between
its own layer k and skip, a causal Mixture-of-Depths.
"""

from dataclasses import asdict, dataclass
from typing import Any

from transformer.model.config import ConfigError, ModelConfig, checked_fields
from transformer.model.field_types import check_field_types

GRADIENT_CHOICES = ("p", "log_p", "log_p_baseline", "none")
POLICY_CHOICES = ("learned", "random", "fixed")
POOLS_CHOICES = ("shared", "per_step")
GRANULARITY_CHOICES = ("sequence", "token")
TOKEN_ATTENTION_CHOICES = ("all", "co_routed")
REWARD_CHOICES = ("first_order", "readout")


@dataclass(frozen=True)
class RoutingConfig:
    pool_size: int = 8
    route_prefix_len: int = 16  # P: the router reads only positions < P (causal-safe)
    temperature_start: float = 2.0  # Gumbel sampling temperature, annealed over training
    temperature_end: float = 0.5
    balance_weight: float = 1e-2
    z_loss_weight: float = 1e-3
    gradient: str = "log_p_baseline"  # how the task loss reaches the router; "none": control
    route_policy: str = "learned"  # baselines: "random" (uniform per step), "fixed" (step k -> its fixed layer)
    seed: int = 0  # seeds the router's own generator (mixed with the rank: see distributed.stream_seed)
    pools: str = "shared"  # "per_step": step k chooses only among its own N / K layers (and skip, if any)
    warm_start_steps: int = 0  # S: the first S training updates route step k -> its fixed layer
    granularity: str = "sequence"  # "token": every token chooses its own layer at every step
    # token routing only ------------------------------------------------------------------
    token_attention: str = "all"  # a layer's queries see the keys of every token processed at the step, or "co_routed"
    capacity_factor: float | None = 1.25  # a layer takes <= ceil(cf * pos / entries) of a sequence's first pos tokens
    skip: bool = False  # an identity entry in the pool: a token may take no layer at a step
    compute_weight: float = 0.0  # penalty per expected layer a token goes through (needs skip)
    # what a token's choice is worth to the router: "first_order" (the gate's <dL/dout, y - x>) or
    # "readout" (the exact loss change at the readout when the step's update is removed, plus the
    # gate's first-order term for the paths through later steps): docs/routing.md, section 12
    reward: str = "first_order"

    def __post_init__(self) -> None:
        check_field_types(self, "routing")
        if not isinstance(self.pool_size, int) or self.pool_size < 1:
            raise ConfigError(f"pool_size={self.pool_size!r} must be a positive integer")
        if not isinstance(self.route_prefix_len, int) or self.route_prefix_len < 1:
            raise ConfigError(
                f"route_prefix_len={self.route_prefix_len!r} must be a positive integer: the router "
                "needs at least one position to read"
            )
        for name in ("temperature_start", "temperature_end"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be > 0, e.g. 2.0 -> 0.5")
        for name in ("balance_weight", "z_loss_weight"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 0")
        if self.gradient not in GRADIENT_CHOICES:
            raise ConfigError(f"gradient={self.gradient!r} is not one of {list(GRADIENT_CHOICES)}")
        if self.route_policy not in POLICY_CHOICES:
            raise ConfigError(f"route_policy={self.route_policy!r} is not one of {list(POLICY_CHOICES)}")
        if self.pools not in POOLS_CHOICES:
            raise ConfigError(f"pools={self.pools!r} is not one of {list(POOLS_CHOICES)}")
        if (
            not isinstance(self.warm_start_steps, int)
            or isinstance(self.warm_start_steps, bool)
            or self.warm_start_steps < 0
        ):
            raise ConfigError(f"warm_start_steps={self.warm_start_steps!r} must be a non-negative integer (0: none)")
        self._check_token_fields()

    def _check_token_fields(self) -> None:
        if self.granularity not in GRANULARITY_CHOICES:
            raise ConfigError(f"granularity={self.granularity!r} is not one of {list(GRANULARITY_CHOICES)}")
        if self.token_attention not in TOKEN_ATTENTION_CHOICES:
            raise ConfigError(f"token_attention={self.token_attention!r} is not one of {list(TOKEN_ATTENTION_CHOICES)}")
        factor = self.capacity_factor
        if factor is not None and (isinstance(factor, bool) or not isinstance(factor, float) or not factor > 0):
            raise ConfigError(
                f"capacity_factor={factor!r} must be > 0 (e.g. 1.25; below 1 forces tokens to skip), or null for none"
            )
        if not isinstance(self.skip, bool):
            raise ConfigError(f"skip={self.skip!r} must be true or false")
        if self.reward not in REWARD_CHOICES:
            raise ConfigError(f"reward={self.reward!r} is not one of {list(REWARD_CHOICES)}")
        if not self.compute_weight >= 0:
            raise ConfigError(f"compute_weight={self.compute_weight} must be >= 0")
        if self.granularity == "sequence" and (self.skip or self.compute_weight or self.reward != "first_order"):
            raise ConfigError(
                "skip, compute_weight and reward apply to token routing only: set granularity: token, or remove them"
            )
        if self.compute_weight and not self.skip:
            raise ConfigError(
                f"compute_weight={self.compute_weight} needs skip: true: without the identity entry every "
                "token goes through every step's layer, so there is no compute to save"
            )

    @property
    def n_entries(self) -> int:
        """What a token-level router chooses among: the pool's layers, then the skip entry."""
        return self.pool_size + int(self.skip)

    def check_fits(self, model: ModelConfig) -> None:
        if self.granularity == "sequence" and self.route_prefix_len > model.n_ctx:
            raise ConfigError(
                f"route_prefix_len={self.route_prefix_len} exceeds n_ctx={model.n_ctx}: the routing "
                "prefix must fit in the context (e.g. n_ctx // 8)"
            )
        if self.pools == "per_step" and self.pool_size % model.n_layers:
            raise ConfigError(
                f"pools='per_step' needs pool_size={self.pool_size} to be a multiple of the "
                f"{model.n_layers} routing steps (model.n_layers): each step owns pool_size / n_layers layers"
            )

    def step_layers(self, step: int, n_steps: int) -> range:
        """The layers step `step` may choose: all N when shared; with per-step pools, step k owns
        layers [k * N / K, (k + 1) * N / K), so a layer only ever sees one depth."""
        if self.pools == "shared":
            return range(self.pool_size)
        own = self.pool_size // n_steps
        return range(step * own, (step + 1) * own)

    def fixed_layer(self, step: int, n_steps: int) -> int:
        """Step k's layer in the fixed order (the "fixed" baseline and the warm start): layer
        k mod N when shared, the first of its own layers with per-step pools."""
        return self.step_layers(step, n_steps)[0] if self.pools == "per_step" else step % self.pool_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RoutingConfig":
        return cls(**checked_fields(cls, values, "RoutingConfig field", "routing"))
