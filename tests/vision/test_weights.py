"""A saved ViT loads back with its configs and the same outputs, without pickle; a missing or
foreign file is a one-line `UserError`."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from transformer.errors import UserError
from transformer.vision.config import ImageConfig
from transformer.vision.fit import vit_config
from transformer.vision.vit import ViT
from transformer.vision.weights import load_vit, save_vit


def test_round_trip_keeps_configs_and_outputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ViT(vit_config(n_layers=1, d_model=16, n_heads=2), ImageConfig()).eval()
    with torch.no_grad():
        model.W_head.normal_()
    save_vit(model, tmp_path / "vit.safetensors")
    loaded = load_vit(tmp_path / "vit.safetensors")
    assert loaded.cfg == model.cfg and loaded.image == model.image
    images = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(loaded(images), model(images), atol=0, rtol=0)


def test_missing_or_foreign_files_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no saved ViT at"):
        load_vit(tmp_path / "absent.safetensors")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(UserError, match="is not a ViT saved by save_vit"):
        load_vit(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="is not a ViT saved by save_vit"):
        load_vit(tmp_path / "junk.safetensors")
