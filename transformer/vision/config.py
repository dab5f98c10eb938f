"""`ImageConfig`: what the vision models need to know about their images, checked up front."""

from dataclasses import dataclass

from transformer.model.config import ConfigError, ModelConfig
from transformer.vision.patches import patch_grid


@dataclass(frozen=True)
class ImageConfig:
    image_size: int = 8  # square images, image_size x image_size pixels
    channels: int = 1
    patch: int = 2
    n_classes: int = 10

    def __post_init__(self) -> None:
        patch_grid(self.image_size, self.patch)
        for name in ("channels", "n_classes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name}={value!r} must be a positive integer")

    @property
    def n_patches(self) -> int:
        return patch_grid(self.image_size, self.patch) ** 2

    @property
    def patch_values(self) -> int:
        """Numbers in one patch: what a DiT predicts per position."""
        return self.channels * self.patch * self.patch


def require_bidirectional(cfg: ModelConfig, what: str) -> None:
    if cfg.causal:
        raise ConfigError(f"{what} reads a whole image at once: build it with ModelConfig(causal=False)")
