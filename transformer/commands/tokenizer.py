"""`transformer tokenizer train | analyze | encode`: make a tokenizer, judge it, look inside it.

Heavy imports (HF tokenizers, numpy) happen inside the handlers, so `transformer --help` stays fast.
Any error a user can cause (missing file, bad vocab size, unreadable corpus) is a `UserError`,
which main.py prints as one line on stderr with exit status 2, like argparse's own errors.
"""

import argparse
from pathlib import Path
from typing import Any


def add_tokenizer_commands(subparsers: Any) -> None:
    """Registers `tokenizer` and its subcommands on the main parser's subparsers."""
    tokenizer = subparsers.add_parser("tokenizer", help="train, analyze or try out a tokenizer")
    commands = tokenizer.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND", required=True)

    train = commands.add_parser("train", help="learn a char or byte-level BPE tokenizer, write tokenizer.json")
    train.add_argument("--kind", choices=("char", "bpe"), required=True)
    train.add_argument(
        "--vocab-size",
        type=int,
        default=None,
        help="bpe: required, at least 257 (256 bytes + <|endoftext|>); "
        "char: optional cap (most frequent characters kept)",
    )
    train.add_argument("--data", default=None, help=_DATA_HELP)
    train.add_argument(
        "--sample-mb",
        type=int,
        default=None,
        help="learn from at most this much of the corpus, spread over it (default 64; all of a smaller one)",
    )
    train.add_argument("--out", type=Path, required=True, help="tokenizer.json path (or a folder for it)")
    train.set_defaults(handler=_train, prog=train.prog)

    analyze = commands.add_parser("analyze", help="measure a tokenizer on a corpus and suggest a vocab size")
    which = analyze.add_mutually_exclusive_group(required=True)
    which.add_argument("--tokenizer", type=Path, help="a tokenizer.json to analyze")
    which.add_argument("--kind", choices=("char", "bpe"), help="train this kind on --data, then analyze it")
    analyze.add_argument("--vocab-size", type=int, default=None, help="with --kind: the size to train")
    analyze.add_argument("--data", default=None, help=_DATA_HELP)
    analyze.add_argument(
        "--min-count", type=int, default=None, help="a token seen fewer times than this counts as rare (default 20)"
    )
    analyze.set_defaults(handler=_analyze, prog=analyze.prog)

    encode = commands.add_parser("encode", help="print the ids and tokens of a text")
    encode.add_argument("--tokenizer", type=Path, required=True)
    encode.add_argument("text")
    encode.set_defaults(handler=_encode, prog=encode.prog)


_DATA_HELP = "builtin (default), a text file, a folder of .txt/.md files, or hf:NAME[:SPLIT][:FIELD]"


def _train(args: argparse.Namespace) -> int:
    import numpy as np

    from transformer.commands.errors import CommandError
    from transformer.data.bulk import BulkEncoder
    from transformer.data.sources import DEFAULT_SAMPLE_MB, open_source, sample_documents
    from transformer.data.tokenizer import train_tokenizer

    sample_mb = DEFAULT_SAMPLE_MB if args.sample_mb is None else args.sample_mb
    if sample_mb < 1:
        raise CommandError(f"--sample-mb must be at least 1, got {sample_mb}")
    documents = sample_documents(args.data, sample_mb << 20)  # a large corpus is not read whole
    tokenizer = train_tokenizer(args.kind, documents, args.vocab_size)
    tokenizer.save(args.out)
    n_characters = sum(len(document) for document in documents)
    encoder = BulkEncoder(tokenizer, np.dtype(np.uint32))  # HF's Encodings of 64 MB would fill gigabytes
    n_tokens = sum(len(encoder.encode(document)) for document in documents)
    print(
        f"trained a {tokenizer.kind} tokenizer: {tokenizer.vocab_size:,} tokens "
        f"(256 bytes + <|endoftext|> + {tokenizer.vocab_size - 257:,} learned)"
    )
    if args.vocab_size is not None and tokenizer.vocab_size < args.vocab_size:
        print(
            f"  (asked for {args.vocab_size:,}: the corpus has no more "
            f"{'characters' if tokenizer.kind == 'char' else 'pairs seen twice'} to add)"
        )
    total = open_source(args.data).total_bytes()
    learned_from = "corpus" if total is not None and total <= sample_mb << 20 else "sample of the corpus"
    print(
        f"{learned_from}: {len(documents):,} documents, {n_characters:,} characters -> {n_tokens:,} tokens "
        f"({n_characters / max(n_tokens, 1):.2f} characters per token)"
    )
    print(f"wrote {args.out}; `transformer tokenizer analyze --tokenizer {args.out}` suggests a vocab size")
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from transformer.data.corpus import load_documents
    from transformer.data.tokenizer import DEFAULT_MIN_COUNT, TextTokenizer, TokenizerError, analyze, train_tokenizer

    if args.tokenizer is not None and args.vocab_size is not None:
        raise TokenizerError("--vocab-size goes with --kind (train then analyze), not with --tokenizer")
    documents = load_documents(args.data)
    if args.tokenizer is not None:
        tokenizer = TextTokenizer.load(args.tokenizer)
    else:
        tokenizer = train_tokenizer(args.kind, documents, args.vocab_size)
    min_count = DEFAULT_MIN_COUNT if args.min_count is None else args.min_count
    report = analyze(tokenizer, documents, min_count=min_count)
    width = max(len(name) for name in report)
    for name, value in report.items():
        if name.startswith("suggestion_"):
            continue  # said in words below
        shown = value if isinstance(value, str) else f"{value:,}" if isinstance(value, int) else f"{value:.4f}"
        print(f"{name:<{width}}  {shown}")
    print(f"suggested vocab size: {report['suggested_vocab_size']:,} ({report['suggestion_rule']})")
    if report["suggestion_capped"]:
        print("  (this tokenizer's whole vocabulary: analyze a larger one to see if the corpus allows more)")
    return 0


def _encode(args: argparse.Namespace) -> int:
    from transformer.data.tokenizer import TextTokenizer

    tokenizer = TextTokenizer.load(args.tokenizer)
    ids = tokenizer.encode(args.text)
    print(f"{len(ids)} tokens for {len(args.text)} characters ({tokenizer.kind}, {tokenizer.vocab_size:,} ids)")
    print("ids:", " ".join(str(i) for i in ids))
    print("tokens:", " ".join(_shown(tokenizer.token_bytes(i)) for i in ids))
    return 0


def _shown(piece: bytes) -> str:
    """A token as readable text: its characters if it holds whole ones, else its raw bytes."""
    try:
        return repr(piece.decode("utf-8"))
    except UnicodeDecodeError:
        return repr(piece)
