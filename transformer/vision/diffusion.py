"""Denoising diffusion: the objective a DiT trains on, and the sampler that turns it into images.

Forward process (Ho et al., 2020): an image x0 in [-1, 1] is noised to step t as

    x_t = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * eps,   eps ~ N(0, I)

with abar_t falling from ~1 (t = 0, almost clean) to ~0 (t = T - 1, pure noise) on the cosine
schedule of Nichol & Dhariwal (2021), which spends fewer steps at the nearly-pure-noise end than
the linear one on small images. The model learns to predict eps from (x_t, t, label): the loss
is the mean squared error, and predicting eps = 0 scores exactly E[eps^2] = 1 — the trivial
baseline a trained denoiser must beat.

Sampling runs DDIM (Song et al., 2021, eta = 0: deterministic given the starting noise) on a
subsequence of the T steps, with classifier-free guidance (Ho & Salimans, 2021): the model's
prediction with the label and without it ("no label", conditioning.py) are combined as
eps_uncond + w * (eps_cond - eps_uncond); w > 1 pushes samples towards what marks their class.
Each step estimates x0, clips it to the pixel range, and continues with the noise that the
clipped x0 implies; continuing with the unclipped prediction instead made guided samples drift
(the ViT agreed with 55% of them at w = 2 and 10% at w = 3, against 100% and 100% this way).
"""

import math

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from transformer.vision.dit import DiT


def cosine_alpha_bar(n_steps: int, offset: float = 0.008) -> Float[Tensor, " n_steps"]:
    """abar_t = f(t + 1) / f(0), f(s) = cos^2(((s / T) + offset) / (1 + offset) * pi / 2), capped
    so that no step removes more than 99.9% of what is left (as in Nichol & Dhariwal)."""
    s = torch.arange(n_steps + 1, dtype=torch.float64) / n_steps
    f = torch.cos((s + offset) / (1 + offset) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    beta = (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - beta, dim=0).float()


class Diffusion:
    def __init__(self, n_steps: int = 1000) -> None:
        self.n_steps = n_steps
        self.alpha_bar = cosine_alpha_bar(n_steps)

    def add_noise(
        self,
        x0: Float[Tensor, "batch channels height width"],
        t: Int[Tensor, " batch"],
        noise: Float[Tensor, "batch channels height width"],
    ) -> Float[Tensor, "batch channels height width"]:
        alpha_bar = self.alpha_bar.to(x0.device)[t][:, None, None, None]
        return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise

    def loss(
        self,
        model: DiT,
        x0: Float[Tensor, "batch channels height width"],
        labels: Int[Tensor, " batch"],
        generator: torch.Generator,
    ) -> Float[Tensor, ""]:
        """Mean squared error of the predicted noise at a uniformly drawn step per image."""
        t = torch.randint(0, self.n_steps, (x0.shape[0],), generator=generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        return F.mse_loss(model(self.add_noise(x0, t, noise), t, labels), noise)

    @torch.no_grad()
    def sample(
        self,
        model: DiT,
        labels: Int[Tensor, " batch"],
        generator: torch.Generator,
        n_sampling_steps: int = 50,
        guidance: float = 2.0,
    ) -> Float[Tensor, "batch channels height width"]:
        """Images of the given classes, in [-1, 1]. guidance = 1 is the plain conditional model."""
        image = model.image
        x = torch.randn(labels.shape[0], image.channels, image.image_size, image.image_size, generator=generator)
        x = x.to(labels.device)
        steps = torch.linspace(self.n_steps - 1, 0, n_sampling_steps).round().long().tolist()
        null = torch.full_like(labels, model.label.null)
        alpha_bar = self.alpha_bar.to(x.device)
        for i, t in enumerate(steps):
            both = model(
                torch.cat([x, x]), torch.full((2 * x.shape[0],), t, device=x.device), torch.cat([labels, null])
            )
            eps_cond, eps_uncond = both.chunk(2)
            eps = eps_uncond + guidance * (eps_cond - eps_uncond)
            x0 = ((x - (1 - alpha_bar[t]).sqrt() * eps) / alpha_bar[t].sqrt()).clamp(-1, 1)
            eps = (x - alpha_bar[t].sqrt() * x0) / (1 - alpha_bar[t]).sqrt()  # the noise the clamped x0 implies
            previous = alpha_bar[steps[i + 1]] if i + 1 < len(steps) else torch.ones((), device=x.device)
            x = previous.sqrt() * x0 + (1 - previous).sqrt() * eps
        return x
