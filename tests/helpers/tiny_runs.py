"""Tiny training runs on a small corpus written to a temporary folder."""

from pathlib import Path

from transformer.builtin_corpus import builtin_documents
from transformer.train_config import RunConfig, load_run_config


def write_corpus(folder: Path, documents: int = 12) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, text in enumerate(builtin_documents()[:documents]):
        (folder / f"doc{index:02d}.txt").write_text(text, encoding="utf-8")
    return folder


def tiny_run_config(tmp_path: Path, routed: bool = True, *overrides: str) -> RunConfig:
    corpus = write_corpus(tmp_path / "corpus")
    settings = [
        "model.d_model=16", "model.n_heads=2", "model.n_layers=2", "model.n_ctx=16",
        f"train.data={corpus}", f"train.out_dir={tmp_path / 'run'}", "train.batch_size=4",
        "train.max_steps=6", "train.warmup_steps=2", "train.eval_interval=3", "train.eval_batches=2",
        "train.checkpoint_interval=3", "train.log_interval=1", "train.sample_tokens=0", "train.lr=3e-3",
    ]
    if routed:
        settings += ["routing.pool_size=3", "routing.route_prefix_len=4"]
    else:
        settings += ["routing=null"]
    return load_run_config(None, settings + list(overrides))
