"""The noise schedule falls from clean to pure noise; noising follows its formula; DDIM with a
perfect noise predictor returns the one image it was trained on, exactly; and a small DiT's
loss falls below the trivial predictor's (eps = 0 scores E[eps^2] = 1) on real digits."""

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tests.helpers.attention_tasks import shape_checks_paused
from transformer.vision.config import ImageConfig
from transformer.vision.diffusion import Diffusion, cosine_alpha_bar
from transformer.vision.digits import load_digits
from transformer.vision.dit import DiT
from transformer.vision.fit import FitConfig, dit_config, to_signed, train_dit


def test_cosine_schedule_falls_from_clean_to_noise() -> None:
    alpha_bar = cosine_alpha_bar(1000)
    assert bool((alpha_bar[1:] < alpha_bar[:-1]).all())
    assert alpha_bar[0] > 0.9999 and alpha_bar[-1] < 1e-4


def test_add_noise_is_the_forward_process_formula() -> None:
    process = Diffusion(10)
    x0, noise = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    t = torch.tensor([0, 9])
    out = process.add_noise(x0, t, noise)
    for i in range(2):
        a = process.alpha_bar[t[i]]
        torch.testing.assert_close(out[i], a.sqrt() * x0[i] + (1 - a).sqrt() * noise[i])


class Oracle(DiT):
    """The exact noise predictor for a data set of one image: eps = (x_t - sqrt(abar) x*) / sqrt(1 - abar)."""

    def __init__(self, target: Tensor, process: Diffusion) -> None:
        super().__init__(dit_config(d_model=8, n_heads=2, n_layers=1), ImageConfig(image_size=4, n_classes=2))
        self.target, self.process = target, process

    def forward(
        self, noisy: Float[Tensor, "batch 1 4 4"], t: Int[Tensor, " batch"], labels: Int[Tensor, " batch"]
    ) -> Float[Tensor, "batch 1 4 4"]:
        a = self.process.alpha_bar[t][:, None, None, None]
        return (noisy - a.sqrt() * self.target) / (1 - a).sqrt()


def test_ddim_with_a_perfect_predictor_returns_the_training_image() -> None:
    process = Diffusion(100)
    target = torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    samples = process.sample(Oracle(target, process), torch.tensor([0, 1, 1]), torch.Generator().manual_seed(1), 10)
    torch.testing.assert_close(samples, target.expand(3, 1, 4, 4), atol=1e-5, rtol=0)


def test_untrained_dit_scores_the_trivial_loss_and_training_beats_it() -> None:
    data = load_digits()
    process = Diffusion()
    fit = FitConfig(steps=60, batch=64, lr=2e-3, weight_decay=0.0, shift=0)
    small = dit_config(d_model=32, n_heads=2, n_layers=2)
    torch.manual_seed(0)
    untrained = DiT(small, ImageConfig())
    images, labels = to_signed(data.test_images), data.test_labels

    def loss(model: DiT) -> float:
        with torch.no_grad():
            return process.loss(model, images, labels, torch.Generator().manual_seed(5)).item()

    noise_energy = torch.randn(images.shape, generator=torch.Generator().manual_seed(5)).pow(2).mean().item()
    assert abs(loss(untrained) - 1.0) < 0.05  # zero prediction: the loss is E[eps^2]
    with shape_checks_paused():
        model, report = train_dit(data, fit, small, diffusion=process)
    assert report.steps == 60
    assert loss(model) < 0.5 * noise_energy
