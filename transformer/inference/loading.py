"""Open a trained run: its model with the checkpoint's weights, its tokenizer and its config.

Every command that uses a trained model (generate, chat, eval, routes) starts here, so a
bad run directory or checkpoint gives the same one-line error everywhere.
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from transformer.data.tokenizer import TextTokenizer
from transformer.devices import resolve_device
from transformer.model.decoder import DecoderEnds
from transformer.training import checkpoint as ckpt
from transformer.training.config import RunConfig, build_model


@dataclass
class TrainedRun:
    model: DecoderEnds
    tokenizer: TextTokenizer
    config: RunConfig
    checkpoint: Path
    step: int


def load_trained(run_dir: Path, which: str = "latest", device: str | torch.device = "cpu") -> TrainedRun:
    """`which`: "latest", "best", or a checkpoint folder; `device`: auto, cpu, cuda or a torch
    device. The model is returned in eval mode."""
    place = device if isinstance(device, torch.device) else resolve_device(device)
    if not run_dir.is_dir():
        raise ckpt.CheckpointError(f"run directory {run_dir} does not exist (give the train.out_dir of a run)")
    folder = ckpt.resolve(run_dir, which)
    state = ckpt.read_state(folder, ckpt.RUN_FIELDS)
    try:
        tokenizer = TextTokenizer.from_json(state["tokenizer"])
        config = RunConfig.from_dict(state["config"]).with_vocab(tokenizer.vocab_size)
    except (KeyError, ValueError) as error:
        raise ckpt.CheckpointError(f"checkpoint {folder} has no usable config or tokenizer: {error}") from error
    model = build_model(config).to(place)
    ckpt.read_weights(folder, model)
    model.set_trained_steps(int(state["step"]), config.train.max_steps)
    model.eval()
    return TrainedRun(model=model, tokenizer=tokenizer, config=config, checkpoint=folder, step=int(state["step"]))
