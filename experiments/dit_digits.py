"""DiT on scikit-learn's 8x8 digits: class-conditional samples, scored by the ViT (goal >= 80%).

Trains `transformer.vision.fit.dit_config()` (4 adaLN-Zero layers, width 64, 2x2 patches) to
predict noise, draws `--per-class` samples of each digit with DDIM and classifier-free guidance,
classifies them with the ViT saved by experiments/vit_digits.py (trained here first if absent),
prints how often the ViT agrees with the label asked for (chance: 10%), and writes a grid, one
column per digit, to docs/results/dit_digits.png.

    python experiments/vit_digits.py --out runs/vision/vit.safetensors
    python experiments/dit_digits.py --vit runs/vision/vit.safetensors
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from transformer.vision.diffusion import Diffusion
from transformer.vision.digits import load_digits
from transformer.vision.fit import DIT_FIT, FitConfig, accuracy, train_dit, train_vit
from transformer.vision.weights import load_vit, save_vit

GOAL = 0.80


def save_grid(images: Tensor, per_class: int, path: Path) -> None:
    """Rows of ten (digits 0-9 left to right), pixels enlarged 8x, ink dark on white."""
    import matplotlib.pyplot as plt

    pixels = images[:, 0].clamp(0, 1).numpy()  # [per_class * 10, 8, 8], ordered sample-major
    rows = [
        np.concatenate(list(np.pad(pixels[r * 10 : (r + 1) * 10], ((0, 0), (1, 1), (1, 1)))), 1)
        for r in range(per_class)
    ]
    grid = np.kron(np.concatenate(rows, 0), np.ones((8, 8)))
    path.parent.mkdir(parents=True, exist_ok=True)
    plt.imsave(path, grid, cmap="gray_r", vmin=0, vmax=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = DIT_FIT
    parser.add_argument("--vit", type=Path, default=Path("runs/vision/vit.safetensors"))
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    parser.add_argument("--sampling-steps", type=int, default=50)
    parser.add_argument("--grid", type=Path, default=Path("docs/results/dit_digits.png"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_digits()
    if args.vit.is_file():
        vit = load_vit(args.vit)
    else:
        vit, _ = train_vit(data)
        save_vit(vit, args.vit)
    print(f"ViT test accuracy on real digits {accuracy(vit, data.test_images, data.test_labels):.4f}")
    fit = FitConfig(**{**defaults.__dict__, "steps": args.steps})
    model, report = train_dit(data, fit)
    tokens = model.image.n_patches
    print(f"DiT steps {report.steps}  batch {fit.batch}  final loss {report.losses[-1]:.4f} (trivial: 1.0)")
    print(f"training: {report.seconds:.1f} s wall, {report.cpu_seconds:.1f} s CPU, {args.threads} threads")
    per_cpu = report.steps * fit.batch / report.cpu_seconds  # steadier than wall clock on a shared machine
    wall = report.images_per_second
    print(f"throughput: {wall:.0f} images/s, {wall * tokens:.0f} tokens/s (wall)")
    print(f"throughput: {per_cpu:.0f} images, {per_cpu * tokens:.0f} tokens per CPU-second")
    labels = torch.arange(10).repeat(args.per_class)
    best = -1.0  # so the first guidance always writes a grid
    for guidance in args.guidance:
        samples = Diffusion().sample(model, labels, torch.Generator().manual_seed(0), args.sampling_steps, guidance)
        pixels = (samples + 1) / 2
        agreement = accuracy(vit, pixels, labels)
        print(f"guidance {guidance}: ViT agrees with the label for {agreement:.4f} of {len(labels)} samples")
        if agreement > best:  # ties keep the smaller guidance
            best = agreement
            save_grid(pixels, args.per_class, args.grid)
    print(f"goal agreement >= {GOAL}: {'met' if best >= GOAL else 'NOT met'} (best {best:.4f}); grid {args.grid}")


if __name__ == "__main__":
    main()
