"""What does a given validation loss look like? Samples from one run at successive checkpoints.

Trains a tiny routed model (`--config`; by default tiny-sequence-routed.yaml, the default run
when the README's table was made) on the built-in corpus, keeping a checkpoint every
`--every` steps, then prints a Markdown table: step, validation loss (nats per character),
and a sample continuing the same prompt (temperature 0.8, top-k 40, the same seed). The
README's loss table comes from this script.

    python experiments/samples_by_loss.py --out runs/samples-by-loss
"""

import argparse
import json
from pathlib import Path

import torch

from transformer.inference.generation import generate
from transformer.inference.loading import load_trained
from transformer.training import checkpoint as ckpt
from transformer.training.config import load_run_config
from transformer.training.run_log import read_log
from transformer.training.trainer import train

PROMPT = "The assert statement\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/samples-by-loss"))
    parser.add_argument(
        "--config", type=Path, default=Path(__file__).parent.parent / "configs" / "tiny-sequence-routed.yaml"
    )
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=120)
    args = parser.parse_args()
    config = load_run_config(
        args.config,
        [
            f"train.out_dir={args.out}",
            f"train.max_steps={args.steps}",
            f"train.eval_interval={args.every}",
            f"train.checkpoint_interval={args.every}",
            f"train.keep_last={args.steps // args.every + 1}",
            "train.sample_tokens=0",
        ],
    )
    if not ckpt.step_checkpoints(args.out):
        train(config)
    losses = {r["step"]: r["val_loss"] for r in read_log(args.out / "metrics.jsonl") if r["kind"] == "eval"}
    rows = ["| step | val loss (nats/char) | sample (prompt: `The assert statement`) |", "|---|---|---|"]
    for folder in ckpt.step_checkpoints(args.out):
        run = load_trained(args.out, str(folder))
        prompt = torch.tensor([run.tokenizer.encode(PROMPT)])
        out = generate(
            run.model, prompt, args.tokens, temperature=0.8, top_k=40, generator=torch.Generator().manual_seed(0)
        )
        text = run.tokenizer.decode(out.tokens[0, prompt.shape[1] :].tolist())
        shown = json.dumps(text)[1:-1].replace("|", "\\|")
        rows.append(f"| {run.step} | {losses.get(run.step, float('nan')):.3f} | `{shown}` |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
