"""What a training run is: the model, its routing (or none), and how to train it.

A run config is a YAML file with three sections, `model` (ModelConfig fields), `routing`
(RoutingConfig fields, or null for a plain decoder) and `train` (TrainSettings fields),
overridden from the command line by `--set section.key=value`. Every key is checked: a
misspelled key is an error that lists the valid ones, never silently ignored.
"""

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from transformer.model.config import ConfigError, ModelConfig, checked_fields
from transformer.model.decoder import Decoder, DecoderEnds
from transformer.model.field_types import check_field_types
from transformer.routing.config import RoutingConfig
from transformer.routing.decoder import RoutedDecoder
from transformer.routing.token_decoder import TokenRoutedDecoder

SECTIONS = ("model", "routing", "train")


@dataclass(frozen=True)
class TrainSettings:
    data: str = "builtin"  # "builtin", a text file or folder, or "hf:NAME[:SPLIT][:FIELD]"
    tokenizer: str = "char"  # "char", "bpe", or a path to a tokenizer.json
    vocab_size: int | None = None  # for "bpe"
    val_fraction: float = 0.1
    batch_size: int = 12  # sequences per process per micro-step
    grad_accum: int = 1  # micro-steps per optimizer step
    max_steps: int = 1000
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 turns clipping off (the norm is still logged)
    eval_interval: int = 250
    eval_batches: int = 20
    eval_route_samples: int = 2  # routed models: sampled-route evaluations averaged
    log_interval: int = 10
    checkpoint_interval: int = 250
    keep_last: int = 2
    seed: int = 1337
    device: str = "auto"  # "auto", "cpu", "cuda"
    threads: int = 0  # CPU threads per process; 0 leaves PyTorch's default (tiny models: 1 is fastest)
    dtype: str = "auto"  # "auto" (bf16 autocast on CUDA, fp32 on CPU), "float32", "bfloat16"
    compile: bool = False
    parallel: str = "ddp"  # with several processes: "ddp" (each holds the model) or "fsdp" (each a shard)
    max_bad_steps: int = 10  # non-finite losses in a row before training stops
    dist_timeout_s: float = 600.0  # DDP: seconds a rank waits for a dead or stalled peer before every rank stops
    sample_tokens: int = 200
    out_dir: str = "runs/default"
    tensorboard: bool = False  # also write the metrics to out_dir/tensorboard/ (the tensorboard extra)

    def __post_init__(self) -> None:
        check_field_types(self, "train")
        for name in (
            "batch_size",
            "grad_accum",
            "max_steps",
            "eval_interval",
            "eval_batches",
            "log_interval",
            "checkpoint_interval",
            "keep_last",
            "max_bad_steps",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"train.{name}={value!r} must be a positive integer")
        for name in ("warmup_steps", "sample_tokens", "eval_route_samples", "threads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"train.{name}={value!r} must be a non-negative integer")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"train.val_fraction={self.val_fraction} must be in (0, 1), e.g. 0.1")
        if not self.lr > 0 or not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"train.lr={self.lr}, train.min_lr={self.min_lr}: need 0 <= min_lr <= lr, lr > 0")
        if isinstance(self.dist_timeout_s, bool) or not isinstance(self.dist_timeout_s, int | float):
            raise ConfigError(f"train.dist_timeout_s={self.dist_timeout_s!r} must be a number of seconds, e.g. 600")
        if not 0 < self.dist_timeout_s < 1e7:
            raise ConfigError(f"train.dist_timeout_s={self.dist_timeout_s!r} must be a positive number of seconds")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError("train.weight_decay and train.grad_clip must be >= 0")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ConfigError(f"train.beta1={self.beta1}, train.beta2={self.beta2} must be in [0, 1)")
        if not isinstance(self.tensorboard, bool):
            raise ConfigError(f"train.tensorboard={self.tensorboard!r} must be true or false")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"train.device={self.device!r} is not one of ['auto', 'cpu', 'cuda']")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"train.dtype={self.dtype!r} is not one of ['auto', 'float32', 'bfloat16']")
        if self.parallel not in ("ddp", "fsdp"):
            raise ConfigError(f"train.parallel={self.parallel!r} is not one of ['ddp', 'fsdp']")
        if self.tokenizer in ("bpe",) and self.vocab_size is None:
            raise ConfigError("train.tokenizer='bpe' needs train.vocab_size, e.g. 4096")


@dataclass(frozen=True)
class RunConfig:
    """`model.d_vocab` may be left out (None): `with_vocab` then fills in the tokenizer's size,
    which is known only once the tokenizer is trained or loaded."""

    model: ModelConfig
    routing: RoutingConfig | None
    train: TrainSettings = field(default_factory=TrainSettings)

    def with_vocab(self, tokenizer_size: int) -> "RunConfig":
        """This config with d_vocab set; a given d_vocab may pad above the tokenizer's size
        (e.g. to a multiple of 64 for faster kernels) but never fall short of it."""
        given = self.model.d_vocab
        if given is None:
            return replace(self, model=replace(self.model, d_vocab=tokenizer_size))
        if given < tokenizer_size:
            raise ConfigError(
                f"model.d_vocab={given} is smaller than the tokenizer's vocabulary ({tokenizer_size}): "
                "leave d_vocab out to use the tokenizer's size"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.to_dict(),
            "routing": self.routing.to_dict() if self.routing else None,
            "train": asdict(self.train),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        """Sections left out take their defaults (a left-out or null `routing`: a plain decoder)."""
        values = _mapping(values, "a run config")
        unknown = sorted(set(values) - set(SECTIONS))
        if unknown:
            raise ConfigError(f"unknown config section(s) {unknown}: valid sections are {list(SECTIONS)}")
        sections = {name: _mapping(values.get(name), f"config section {name!r}") for name in SECTIONS}
        return cls(
            model=ModelConfig.from_dict(sections["model"]),
            routing=RoutingConfig.from_dict(sections["routing"]) if values.get("routing") is not None else None,
            train=_settings_from_dict(sections["train"]),
        )


def _mapping(body: object, what: str) -> dict[str, Any]:
    """`body` as a mapping with string keys (null: empty); anything else is a `ConfigError`, so
    `model: [1, 2]` or `--set routing=5` is one line, not a TypeError three calls later."""
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise ConfigError(f"{what} must be a mapping of KEY: VALUE, not {body!r:.60}")
    odd = [key for key in body if not isinstance(key, str)]
    if odd:
        raise ConfigError(f"{what} has keys that are not names: {odd!r:.60}")
    return body


def build_model(config: RunConfig) -> DecoderEnds:
    """The decoder a run config describes, with fresh weights; its d_vocab must be filled in
    (`RunConfig.with_vocab`). Sizes too large for this machine are a one-line error: a config
    can be well typed and still ask for terabytes (`model.d_model=1000000`)."""
    try:
        if config.routing is None:
            return Decoder(config.model)
        if config.routing.granularity == "token":
            return TokenRoutedDecoder(config.model, config.routing)
        return RoutedDecoder(config.model, config.routing)
    except RuntimeError as error:  # torch.OutOfMemoryError (CUDA) is one too
        if "allocate" not in str(error):
            raise
        m = config.model
        raise ConfigError(
            f"the model (d_model={m.d_model}, n_layers={m.n_layers}, d_mlp={m.d_mlp}, d_vocab={m.d_vocab}) "
            "does not fit in this machine's memory: make it smaller"
        ) from None


def with_overrides(values: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """`values` (a config's sections, as read from YAML) with each `SECTION.KEY=VALUE` applied.

    Overrides apply to what was written, before any size is derived: `--set model.d_model=256`
    on a config that leaves d_head out gives d_head = 256 // n_heads, not the old d_head.
    """
    values = {section: dict(body) if isinstance(body, dict) else body for section, body in values.items()}
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or section not in SECTIONS or (not dot and section != "routing"):
            raise ConfigError(
                f"--set {assignment!r}: expected SECTION.KEY=VALUE with SECTION in {list(SECTIONS)} "
                "(or routing=null for a plain decoder)"
            )
        value = parse_yaml(raw, f"--set {assignment!r}: the value")
        if not dot:  # routing=null
            values["routing"] = value
            continue
        if values.get(section) is None:
            values[section] = {}
        body = values[section]
        if not isinstance(body, dict):
            raise ConfigError(f"--set {assignment!r}: config section {section!r} is {body!r:.60}, not a mapping")
        body[name.strip()] = value
    return values


class _UniqueKeyLoader(yaml.SafeLoader):  # type: ignore[misc]  # yaml ships no types
    """PyYAML's safe loader (plain data, no objects), except that a key given twice in one
    mapping is an error: the default keeps the last silently, so `lr: 0.1` written twice in a
    long config would train with whichever came last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice in one mapping", key_node.start_mark
                )
            seen.add(key if isinstance(key, (str, int, float, bool)) else id(key_node))
        mapping: dict[Any, Any] = super().construct_mapping(node, deep)
        return mapping


def parse_yaml(text: str, what: str) -> Any:
    """`text` read as YAML (safe: plain data only, duplicate keys refused); a `ConfigError`
    naming `what` when it is not valid YAML."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: plain data only
    except (yaml.YAMLError, RecursionError) as error:
        detail = " ".join(str(error).split())
        raise ConfigError(f"{what} is not valid YAML: {detail}") from None


def _settings_from_dict(values: dict[str, Any]) -> TrainSettings:
    return replace(TrainSettings(), **checked_fields(TrainSettings, values, "train setting", "train"))


def load_run_config(path: Path | None, overrides: list[str] | None = None) -> RunConfig:
    """A YAML file (or the default run, configs/tiny-routed.yaml, when None), then the overrides.

    An empty file (or one holding only comments or `{}`) is an error, not a run of every
    class's defaults: leaving `--config` out is how to ask for the default run."""
    if path is None:
        path = Path(__file__).parent.parent / "configs" / "tiny-routed.yaml"
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder: give a YAML file, e.g. {path}/config.yaml")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as error:
        raise ConfigError(f"config file {path} cannot be read: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {error.start} is {error.object[error.start]:#04x}): "
            "save it as UTF-8"
        ) from None
    values = parse_yaml(text, f"config file {path}")
    if values is None or values == {}:
        raise ConfigError(
            f"config file {path} is empty: give sections {list(SECTIONS)}, or leave --config out "
            "for the default run (configs/tiny-routed.yaml)"
        )
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping with sections {list(SECTIONS)}")
    return RunConfig.from_dict(with_overrides(_mapping(values, "a run config"), overrides or []))


def check_out_dir(settings: TrainSettings) -> None:
    """`train.out_dir` must be a folder or a path one can make: a file there (or a file
    where one of its parents should be) is a `ConfigError` before any work, not a
    FileExistsError after the data is loaded."""
    path = Path(settings.out_dir)
    for place in (path, *path.parents):
        if place.exists() and not place.is_dir():
            raise ConfigError(f"train.out_dir={settings.out_dir!r}: {place} is a file, not a folder")
