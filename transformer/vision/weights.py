"""Saving a trained ViT so the DiT experiment can score its samples with it: safetensors (no
pickle, nothing runs on load) holding the weights, the configs as JSON in its metadata."""

import json
from dataclasses import asdict
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from transformer.errors import UserError
from transformer.model.config import ModelConfig
from transformer.vision.config import ImageConfig
from transformer.vision.vit import ViT


class WeightsError(UserError):
    """A weights file that is missing or is not a saved ViT."""


def save_vit(model: ViT, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"model": json.dumps(model.cfg.to_dict()), "image": json.dumps(asdict(model.image))}
    save_file({name: p.detach().contiguous() for name, p in model.state_dict().items()}, str(path), metadata)


def load_vit(path: Path) -> ViT:
    if not path.is_file():
        raise WeightsError(f"no saved ViT at {path}: train one with experiments/vit_digits.py --out {path}")
    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
        state = load_file(str(path))
        model = ViT(ModelConfig.from_dict(json.loads(metadata["model"])), ImageConfig(**json.loads(metadata["image"])))
        model.load_state_dict(state)
    except (SafetensorError, KeyError, RuntimeError, json.JSONDecodeError) as error:
        raise WeightsError(f"{path} is not a ViT saved by save_vit: {error}") from None
    return model.eval()
