"""Tiny training runs on a small corpus written to a temporary folder."""

from pathlib import Path

import pytest
import torch

from transformer.data.corpus import builtin_documents
from transformer.model.decoder import DecoderEnds
from transformer.routing.decoder import as_routed
from transformer.training.config import RunConfig, build_model, load_run_config


def write_corpus(folder: Path, documents: int = 12) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, text in enumerate(builtin_documents()[:documents]):
        (folder / f"doc{index:02d}.txt").write_text(text, encoding="utf-8")
    return folder


def two_topic_sources(folder: Path) -> dict[str, Path]:
    """Two label sources for route analysis: two different sets of help topics."""
    documents = builtin_documents()
    sources = {"syntax": folder / "syntax.txt", "types": folder / "types.txt"}
    sources["syntax"].write_text("\n\n".join(documents[12:18]), encoding="utf-8")
    sources["types"].write_text("\n\n".join(documents[44:48]), encoding="utf-8")
    return sources


# The tiny runs are sequence-routed unless an override says `routing.granularity=token`: the
# config that was the default run when these helpers were written (the default is token-routed now).
SEQUENCE_ROUTED = Path(__file__).parent.parent.parent / "transformer" / "configs" / "tiny-sequence-routed.yaml"


def tiny_run_config(tmp_path: Path, routed: bool = True, *overrides: str) -> RunConfig:
    corpus = write_corpus(tmp_path / "corpus")
    settings = [
        "model.d_model=16",
        "model.n_heads=2",
        "model.n_layers=2",
        "model.n_ctx=16",
        f"train.data={corpus}",
        f"train.out_dir={tmp_path / 'run'}",
        "train.batch_size=4",
        "train.max_steps=6",
        "train.warmup_steps=2",
        "train.eval_interval=3",
        "train.eval_batches=2",
        "train.checkpoint_interval=3",
        "train.log_interval=1",
        "train.sample_tokens=0",
        "train.lr=3e-3",
    ]
    if routed:
        settings += ["routing.pool_size=3", "routing.route_prefix_len=4"]
    else:
        settings += ["routing=null"]
    return load_run_config(SEQUENCE_ROUTED, settings + list(overrides))


# With a primed router and a tiny learning rate, six steps leave the routes where the primed
# router put them (spread over the layers), whatever the torch version's rounding.
STILL_ROUTES = ("train.lr=1e-5", "train.min_lr=1e-6")


def prime_routers(patch: pytest.MonkeyPatch, scale: float = 5.0) -> None:
    """Make the trainer build routed models whose router readout starts random (not zero), so
    a few training steps already route different sequences to different layers: tests that
    need a non-trivial route table then do not hang on where six tiny steps happen to land."""
    import transformer.training.trainer as trainer_module

    def primed(config: RunConfig) -> DecoderEnds:
        model = build_model(config)
        if model.route_granularity == "sequence":
            with torch.no_grad():
                as_routed(model).router.W_R.normal_(0.0, scale, generator=torch.Generator().manual_seed(0))
        return model

    patch.setattr(trainer_module, "build_model", primed)
