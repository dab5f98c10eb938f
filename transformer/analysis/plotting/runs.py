"""What a plot needs from a finished (or running) run: its metrics, its FLOPs, its routes.

Everything here is plain Python, torch and numpy; no matplotlib. The figures module draws
what this module measures, so the numbers can be tested without looking at a picture.

- `metrics.jsonl` holds one record per logged step (`kind` "train" or "eval"). A resumed run
  re-logs the steps between its checkpoint and the crash, so the last record of each
  (kind, step) wins: it is the one the surviving run produced. A line torn by the crash is
  skipped with a warning.
- Training compute is counted as the trainer counts it for MFU: tokens seen times
  `flops_per_token` of the *real* model (built from the checkpoint's config on the meta
  device, so no memory is spent on weights). Equal-compute comparisons need this: a routed
  model with a pool of N layers and a plain model of K layers pay the same per token.
- Routes: the argmax path of each validation window, from the latest checkpoint.
"""

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from transformer.data.tokenizer import TextTokenizer
from transformer.errors import UserError
from transformer.routing.decoder import as_routed
from transformer.training import checkpoint as ckpt
from transformer.training.config import RunConfig, build_model
from transformer.training.distributed import VAL_WINDOWS_STREAM, stream_seed
from transformer.training.run_log import flops_per_token, read_records

METRICS = "metrics.jsonl"


class PlotError(UserError):
    """A run that cannot be plotted; a one-line message that names the path."""


@dataclass
class ModelSize:
    parameters: int  # every weight the model holds
    active: int  # weights one token's forward pass multiplies by (DecoderEnds.active_parameters)
    flops_per_token: float  # forward + backward, as the trainer counts it


@dataclass
class RunHistory:
    """One run's metrics, ready to plot: records sorted by step, one per step."""

    label: str
    run_dir: Path
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    config: RunConfig | None = None  # from the latest checkpoint; None when there is none
    size: ModelSize | None = None
    notes: list[str] = field(default_factory=list)  # why something could not be measured

    @property
    def routed(self) -> bool:
        return any("usage" in record for record in self.train)

    @property
    def token_routed(self) -> bool:
        """Routes chosen per token (from the checkpoint's config; False when it could not be read)."""
        routing = self.config.routing if self.config is not None else None
        return routing is not None and routing.granularity == "token"

    @property
    def pool_size(self) -> int:
        usage = next(record["usage"] for record in self.train if "usage" in record)
        return len(usage[0])

    def flops(self, record: dict[str, Any]) -> float | None:
        """Training FLOPs spent up to this record's step."""
        if self.size is None or record.get("tokens") is None:
            return None
        return float(record["tokens"]) * self.size.flops_per_token


def last_per_step(records: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The records of `kind`, the last one written for each step, sorted by step."""
    latest = {record["step"]: record for record in records if record.get("kind") == kind and "step" in record}
    return [latest[step] for step in sorted(latest)]


def load_history(run_dir: Path, label: str) -> RunHistory:
    if not run_dir.is_dir():
        raise PlotError(f"run directory {run_dir} does not exist (give the train.out_dir of a run)")
    path = run_dir / METRICS
    if not path.is_file():
        raise PlotError(f"{path} does not exist: is {run_dir} the train.out_dir of a run?")
    records, torn = read_records(path)
    history = RunHistory(label, run_dir, last_per_step(records, "train"), last_per_step(records, "eval"))
    if torn:
        history.notes.append(f"skipped line(s) {torn} of {path}: not JSON (a crash in the middle of a write?)")
    if not history.train and not history.eval:
        raise PlotError(f"{path} has no train or eval records yet: nothing to plot")
    try:
        checkpoint = ckpt.resolve(run_dir, "latest")
        state = ckpt.read_state(checkpoint)
        tokenizer = TextTokenizer.from_json(state["tokenizer"])
        history.config = RunConfig.from_dict(state["config"]).with_vocab(tokenizer.vocab_size)
        work = recorded_work(checkpoint)
        history.size = model_size(history.config, work)
        if work is None and history.token_routed:
            history.notes.append(
                f"{checkpoint} has no weights file to read the work done from: FLOPs count every layer a token may take"
            )
    except (ckpt.CheckpointError, KeyError, ValueError) as error:
        history.notes.append(f"no model size, so no FLOPs axis: {error}")
    return history


def recorded_work(checkpoint: Path) -> torch.Tensor | None:
    """The layer applications and tokens a token-routed run counted (its `work` buffer), read
    alone from the checkpoint's weights (safetensors: only its header and these 16 bytes, no
    checksum pass over the whole file for a plot); None for a model that keeps no such count."""
    path = checkpoint / ckpt.WEIGHTS
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as weights:
            return weights.get_tensor("work") if "work" in weights.keys() else None
    except (OSError, SafetensorError) as error:
        raise ckpt.CheckpointError(f"{path} cannot be read: {error}") from None


def model_size(config: RunConfig, work: torch.Tensor | None = None) -> ModelSize:
    """Counts the parameters of the model the config (d_vocab filled in) builds, on the meta
    device: shapes without storage, so a billion-parameter config costs no memory to count.
    `work`: a token-routed run's recorded work, from which it counts the weights a token used
    (without it such a model assumes the most its capacity allows)."""
    with torch.device("meta"):
        model = build_model(config)
    if hasattr(model, "work"):  # a buffer with no data on the meta device: the run's, or none yet
        model.work = work if work is not None else torch.zeros(2, dtype=torch.long)
    cfg = model.cfg
    active = model.active_parameters()
    return ModelSize(
        parameters=sum(p.numel() for p in model.parameters()),
        active=active,
        flops_per_token=flops_per_token(active, cfg.n_layers, cfg.d_model, cfg.n_ctx),
    )


def default_labels(run_dirs: list[Path]) -> list[str]:
    """Each run's folder name; where two share a name, as many parent folders as tell them apart."""
    parts = [run_dir.resolve().parts for run_dir in run_dirs]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{label} ({index})" for index, label in enumerate(labels)]


RESERVED_NAMES = ("compare.png",)  # what plot_runs itself writes into --out beside the run folders


def folder_names(labels: list[str]) -> list[str]:
    """One folder name per run label, each a single, distinct name inside `--out`.

    Labels are the user's (`--labels`) and may hold `..`, `/` or repeats; used as they are,
    `../x` would write outside `--out` and two equal labels would overwrite each other's
    figures. So: characters other than letters, digits, `.`, `_` and `-` become `_`; leading
    and trailing `._-` go (no `..`, no hidden folder); at most 80 characters; an empty result
    is `run`; and a name already taken (compared without case, as macOS and Windows do)
    gets `-2`, `-3`, ... until it is free.
    """
    taken = {name.casefold() for name in RESERVED_NAMES}
    names = []
    for label in labels:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", label)[:80].strip("._-") or "run"
        name, copy = base, 1
        while name.casefold() in taken:
            copy += 1
            name = f"{base}-{copy}"
        taken.add(name.casefold())
        names.append(name)
    return names


@dataclass
class RouteCounts:
    """The argmax path (pool layer per routing step) of each validation window, in draw order."""

    routes: list[tuple[int, ...]]
    pool_size: int
    n_steps: int
    checkpoint_step: int
    eval_windows: int  # the first eval_windows routes belong to the windows the trainer evaluates on

    @property
    def paths(self) -> Counter[tuple[int, ...]]:
        return Counter(self.routes)

    @property
    def windows(self) -> int:
        return len(self.routes)

    def entropy(self) -> float:
        """Entropy of the path distribution in nats; ln(N^K) when every path is equally used."""
        return sum(n / self.windows * math.log(self.windows / n) for n in self.paths.values())

    def usage(self, first: int | None = None) -> list[list[float]]:
        """Fraction of the (first `first`) windows at each pool layer per step: the marginals of the paths."""
        routes = self.routes[:first]
        table = [[0.0] * self.pool_size for _ in range(self.n_steps)]
        for path in routes:
            for step, layer in enumerate(path):
                table[step][layer] += 1 / len(routes)
        return table


@torch.no_grad()
def route_counts(run_dir: Path, min_windows: int = 256, batch: int = 64) -> RouteCounts:
    """The argmax route of at least `min_windows` validation windows, from the latest checkpoint.

    The windows continue the trainer's own validation draws (same generator seed, batches of
    `batch_size`), so the first `eval_batches x batch_size` of them are exactly the windows the
    run evaluates on, and their paths' marginals equal the `usage` of the eval record at the
    checkpoint's step. Only the routing prefix is run: the route is a function of the first P
    tokens (docs/routing.md, section 2), so the rest of each window cannot change it.
    """
    from transformer.data.tokens import prepare_corpus
    from transformer.inference.loading import load_trained

    run = load_trained(run_dir, "latest")
    settings = run.config.train
    if run.model.kind != "routed":
        raise PlotError(f"{run_dir} is a plain decoder: it has no routes")
    model = as_routed(run.model)
    data = prepare_corpus(settings.data, run.tokenizer, settings.val_fraction)
    generator = torch.Generator().manual_seed(stream_seed(settings.seed, 0, VAL_WINDOWS_STREAM))
    n_batches = max(settings.eval_batches, math.ceil(min_windows / settings.batch_size))
    windows = torch.cat(
        [data.sample_windows("val", settings.batch_size, model.cfg.n_ctx, generator) for _ in range(n_batches)]
    )
    prefixes = windows[:, : model.routing.route_prefix_len]
    routes: list[tuple[int, ...]] = []
    for start in range(0, len(prefixes), batch):
        info = model(prefixes[start : start + batch]).routing
        routes += [tuple(row) for row in info.layer_choices.tolist()]
    return RouteCounts(
        routes,
        model.routing.pool_size,
        model.n_steps,
        run.step,
        eval_windows=settings.eval_batches * settings.batch_size,
    )
