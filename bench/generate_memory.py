"""Memory of long generation: what `transformer generate` adds over the loaded model, old way and new.

Two paths, each in its own fresh child process (no path inherits another's allocations), on
the same model (GPT-2's padded vocabulary of 50,304 ids, so that per-step logits are what they
cost for a real BPE model; a small body, so the run is quick):

- `keep-logits`: `generate()`, which returns every step's logits (what the command did before):
  new x d_vocab float32, 8,000 x 50,304 x 4 bytes = 1.6 GB;
- `stream-ids`: `stream()`, keeping only each step's id (what the command does now).

Figures: RSS before generating, peak RSS during it (Linux VmHWM, reset just before), the
peak added, and the wall time. Run from the repository root:

    PYTHONPATH=. python bench/generate_memory.py --new-tokens 8000
"""

import argparse
import json
import subprocess
import sys
import time

PATHS = ("keep-logits", "stream-ids")


def measure(path: str, new_tokens: int, d_vocab: int, n_ctx: int) -> dict[str, float]:
    import torch

    from bench.machine import proc_status_kib, reset_peak_rss
    from transformer.inference.generation import generate, stream
    from transformer.model.config import ModelConfig
    from transformer.model.decoder import Decoder

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = ModelConfig(d_vocab=d_vocab, d_model=64, n_heads=4, n_layers=2, n_ctx=n_ctx, kernels="fast")
    model = Decoder(config).eval()
    prompt = torch.zeros(1, 1, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    list(stream(model, prompt, 4, generator=generator))  # warm up the kernels and the allocator
    reset_peak_rss()
    before = proc_status_kib("VmRSS")
    start = time.perf_counter()
    if path == "keep-logits":
        count = generate(model, prompt, new_tokens, generator=generator).tokens.shape[1] - 1
    else:
        count = len([int(token) for token, _ in stream(model, prompt, new_tokens, generator=generator)])
    seconds = time.perf_counter() - start
    assert count == new_tokens
    peak = proc_status_kib("VmHWM")
    return {"rss_before_mb": before / 1024, "peak_mb": peak / 1024, "added_mb": (peak - before) / 1024, "s": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=8000)
    parser.add_argument("--d-vocab", type=int, default=50304)
    parser.add_argument("--n-ctx", type=int, default=128)
    parser.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.new_tokens, args.d_vocab, args.n_ctx)))
        return
    print(f"{args.new_tokens} new tokens, d_vocab {args.d_vocab}, n_ctx {args.n_ctx} (one fresh process per path)")
    print(f"{'path':<12} {'RSS before':>11} {'peak RSS':>9} {'added':>9} {'time':>7}")
    results = {}
    for path in PATHS:
        done = subprocess.run(
            [sys.executable, __file__, "--child", path, *sys.argv[1:]], capture_output=True, text=True, check=True
        )
        results[path] = row = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"{path:<12} {row['rss_before_mb']:>8.0f} MB {row['peak_mb']:>6.0f} MB "
            f"{row['added_mb']:>6.0f} MB {row['s']:>6.1f}s"
        )
    ratio = results["keep-logits"]["added_mb"] / max(results["stream-ids"]["added_mb"], 1.0)
    print(f"memory added: keep-logits / stream-ids = {ratio:.0f}x")


if __name__ == "__main__":
    main()
