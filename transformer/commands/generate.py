"""`transformer generate` and `transformer chat`: text from a trained run, through a KV cache.

`generate` prints the continuation of one prompt. `chat` reads lines from stdin: `temp X`,
`topk X` and `topp X` change the sampling, `quit` (or end of input) leaves, and any other line
is a prompt whose continuation is printed. Both use `generation.generate`, so its two rules
hold here (docs/generation.md): a routed model needs a prompt of at least `route_prefix_len`
tokens, and past `n_ctx` tokens the window slides, one full forward per token.

An empty prompt starts from `<|endoftext|>`: the training stream puts it before every
document, so the model continues with the start of a new one.
"""

import argparse
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from transformer.commands.options import (
    add_run_options,
    chosen_device,
    finite_float,
    non_negative_int,
    positive_int,
    seed_int,
)
from transformer.inference.limits import MAX_NEW_TOKENS

if TYPE_CHECKING:
    import torch

    from transformer.inference.loading import TrainedRun

_RULES = (
    "A routed model chooses its layers from its first route_prefix_len tokens, so its prompt must hold "
    "at least that many; past the context (n_ctx) the window slides, one full forward per token."
)
_CHAT_HELP = "a line is a prompt; commands: temp X (0: greedy), topk K (0: off), topp P (1: off), quit"


def add_generate_commands(commands: Any) -> None:
    """Registers `generate` and `chat` on the main parser's subparsers."""
    generate = commands.add_parser(
        "generate", help="continue a prompt with a trained model", description=f"Continue a prompt. {_RULES}"
    )
    add_run_options(generate, hf=True)
    generate.add_argument("--prompt", default="", help="text to continue (empty: start a new document)")
    _add_sampling_options(generate)
    generate.set_defaults(handler=run_generate, prog=generate.prog)
    chat = commands.add_parser(
        "chat", help="an interactive loop: each line is a prompt", description=f"{_CHAT_HELP}. {_RULES}"
    )
    add_run_options(chat, hf=True)
    _add_sampling_options(chat)
    chat.set_defaults(handler=run_chat, prog=chat.prog)


def _add_sampling_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-new-tokens",
        type=non_negative_int,
        default=200,
        help=f"tokens to generate (default 200, at most {MAX_NEW_TOKENS:,})",
    )
    parser.add_argument(
        "--temperature",
        type=finite_float,
        default=1.0,
        help="0: greedy; 1 (default): the model's own distribution; above 1: flatter",
    )
    parser.add_argument("--top-k", type=positive_int, default=None, help="sample only from the K most likely tokens")
    parser.add_argument(
        "--top-p",
        type=finite_float,
        default=None,
        help="sample only from the smallest set of most likely tokens holding probability P",
    )
    parser.add_argument("--seed", type=seed_int, default=0, help="seed of the sampling (same seed: same text)")


@dataclass
class Settings:
    max_new_tokens: int
    temperature: float
    top_k: int | None
    top_p: float | None

    def check(self) -> None:
        from transformer.inference.generation import check_settings

        check_settings(self.max_new_tokens, self.temperature, self.top_k, self.top_p)


def run_generate(args: argparse.Namespace) -> int:
    run, settings, generator = _open(args)
    print(continuation(run, args.prompt, settings, generator))
    return 0


def run_chat(args: argparse.Namespace) -> int:
    run, settings, generator = _open(args)
    chat(run, settings, generator, sys.stdin)
    return 0


def _open(args: argparse.Namespace) -> tuple["TrainedRun", Settings, "torch.Generator"]:
    """The run, its sampling settings (checked before the slow load) and the seeded generator."""
    import torch

    from transformer.inference.loading import load_trained

    settings = Settings(args.max_new_tokens, args.temperature, args.top_k, args.top_p)
    settings.check()
    if args.hf is not None:
        from transformer.inference.hf_run import load_hf_run

        run = load_hf_run(args.hf, chosen_device(args))
    else:
        run = load_trained(args.run, args.checkpoint, chosen_device(args))
    return run, settings, torch.Generator().manual_seed(args.seed)


def continuation(run: "TrainedRun", prompt: str, settings: Settings, generator: "torch.Generator") -> str:
    """The text the model writes after `prompt`."""
    import torch

    from transformer.inference.generation import stream

    ids = run.tokenizer.encode(prompt) or [run.tokenizer.eot_id]
    tokens = torch.tensor([ids], device=next(run.model.parameters()).device)
    steps = stream(
        run.model,
        tokens,
        settings.max_new_tokens,
        settings.temperature,
        settings.top_k,
        settings.top_p,
        generator,
        n_decodable=run.tokenizer.vocab_size,  # a padded d_vocab's extra ids have no text
    )
    return run.tokenizer.decode([int(token) for token, _ in steps])  # the ids only: memory stays flat


def chat(run: "TrainedRun", settings: Settings, generator: "torch.Generator", lines: TextIO) -> None:
    """The REPL: one line in, one answer (or a one-line hint) out, until `quit` or end of input."""
    from transformer.inference.generation import GenerationError

    print(f"chatting with {run.checkpoint} (step {run.step}): {_CHAT_HELP}")
    while True:
        if lines.isatty():
            print("> ", end="", flush=True)
        line = lines.readline()
        if not line or line.strip() == "quit":
            return
        words = line.split()
        if not words:
            print(f"({_CHAT_HELP})")
        elif words[0] in _SETTERS:
            print(_set(settings, words))
        else:
            try:
                print(continuation(run, line.rstrip("\r\n"), settings, generator))
            except GenerationError as error:
                print(f"({error})")


def _set(settings: Settings, words: list[str]) -> str:
    """Apply `temp X`, `topk K` or `topp P`; the line to print, a hint when the value is bad."""
    name, hint = _SETTERS[words[0]]
    if len(words) != 2:
        return f"({words[0]} takes one value: {hint})"
    try:
        value: float | int | None = float(words[1]) if name != "top_k" else int(words[1])
    except ValueError:
        return f"({words[1]!r} is not a {'whole ' if name == 'top_k' else ''}number: {hint})"
    if (name == "top_k" and value == 0) or (name == "top_p" and value == 1.0):
        value = None  # off
    before = getattr(settings, name)
    setattr(settings, name, value)
    try:
        settings.check()
    except ValueError:
        setattr(settings, name, before)
        return f"({words[0]} {words[1]} is out of range: {hint})"
    return f"{name} = {'off' if value is None else value}"


_SETTERS = {
    "temp": ("temperature", "e.g. temp 0.8 (0: greedy)"),
    "topk": ("top_k", "e.g. topk 40 (0: off)"),
    "topp": ("top_p", "e.g. topp 0.9 (1: off)"),
}
