"""ViT on scikit-learn's 8x8 digits: test accuracy on the fixed 360-image split (goal >= 97%).

Trains `transformer.vision.fit.vit_config()` (4 bidirectional layers, width 64, 2x2 patches)
with the defaults of `FitConfig`, prints the figures docs/vit.md quotes, and saves the weights
for experiments/dit_digits.py to score its samples with.

    python experiments/vit_digits.py --out runs/vision/vit.safetensors
"""

import argparse
from pathlib import Path

import torch

from transformer.vision.digits import load_digits
from transformer.vision.fit import FitConfig, accuracy, train_vit
from transformer.vision.weights import save_vit

GOAL = 0.97


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = FitConfig()
    parser.add_argument("--out", type=Path, default=Path("runs/vision/vit.safetensors"))
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: as the slow test)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_digits()
    fit = FitConfig(steps=args.steps, seed=args.seed)
    model, report = train_vit(data, fit)
    test = accuracy(model, data.test_images, data.test_labels)
    train = accuracy(model, data.train_images, data.train_labels)
    tokens = model.image.n_patches + 1
    print(f"steps {report.steps}  batch {fit.batch}  images seen {report.steps * fit.batch}")
    print(f"training: {report.seconds:.1f} s wall, {report.cpu_seconds:.1f} s CPU, {args.threads} threads")
    per_cpu = report.steps * fit.batch / report.cpu_seconds  # steadier than wall clock on a shared machine
    wall = report.images_per_second
    print(f"throughput: {wall:.0f} images/s, {wall * tokens:.0f} tokens/s (wall)")
    print(f"throughput: {per_cpu:.0f} images, {per_cpu * tokens:.0f} tokens per CPU-second")
    print(f"final training loss {report.losses[-1]:.4f}")
    print(f"train accuracy {train:.4f}  test accuracy {test:.4f} ({round(test * len(data.test_labels))}/360)")
    print(f"goal test accuracy >= {GOAL}: {'met' if test >= GOAL else 'NOT met'}")
    save_vit(model, args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
