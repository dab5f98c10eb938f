"""`transformer data prepare | verify`: pre-tokenise a corpus once, train on it many times.

`prepare` streams SOURCE (a file, a folder, hf:NAME, builtin) through the tokenizer into shard
files in DIR (transformer/data/prepare.py), with a progress bar in MB/s and ETA on a terminal;
`train.data=DIR` then trains on it with no start-up work. Interrupted, the same command
resumes. `verify` re-tokenises the source and compares it with DIR, id for id.
Heavy imports happen inside the handlers, so `transformer --help` stays fast.
"""

import argparse
import time
from pathlib import Path
from typing import Any

_SOURCE_HELP = "a text file, a folder of .txt/.md files, hf:NAME[:SPLIT][:FIELD], or builtin"


def add_data_commands(subparsers: Any) -> None:
    """Registers `data` and its subcommands on the main parser's subparsers."""
    data = subparsers.add_parser("data", help="prepare a corpus's tokens once, for training many times")
    commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    prepare = commands.add_parser(
        "prepare",
        help="tokenise SOURCE into shard files in --out (resumes an interrupted preparation)",
        description="Tokenise SOURCE into DIR, streaming, in bounded memory, on every core. "
        "Train on it with --set train.data=DIR.",
    )
    prepare.add_argument("source", metavar="SOURCE", help=_SOURCE_HELP)
    prepare.add_argument(
        "--tokenizer",
        required=True,
        metavar="char|bpe|PATH",
        help="a kind to learn from a sample of SOURCE, or a tokenizer.json file",
    )
    prepare.add_argument("--vocab-size", type=int, default=None, help="bpe: the vocabulary size to learn (required)")
    prepare.add_argument("--out", type=Path, required=True, metavar="DIR", help="the folder for the shards")
    prepare.add_argument(
        "--sample-mb", type=int, default=None, help="learn the tokenizer from at most this much of SOURCE (default 64)"
    )
    _add_settings(prepare)
    prepare.add_argument("--shard-mb", type=float, default=256, help="size of one shard file (default 256)")
    prepare.set_defaults(handler=_prepare, prog=prepare.prog)

    verify = commands.add_parser("verify", help="re-tokenise a prepared folder's source and compare, id for id")
    verify.add_argument("folder", metavar="DIR", type=Path)
    _add_settings(verify)
    verify.set_defaults(handler=_verify, prog=verify.prog)


def _add_settings(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers", type=int, default=0, help="encoding processes (default: one per core for bpe, 1 for char)"
    )
    parser.add_argument(
        "--memory-mb", type=int, default=512, help="what preparing may hold, all processes together (default 512)"
    )


def _prepare(args: argparse.Namespace) -> int:
    from transformer.data.prepare import PrepareSettings, prepare_tokens
    from transformer.data.shards import read_manifest
    from transformer.data.sources import open_source

    settings = PrepareSettings(workers=args.workers, memory_mb=args.memory_mb, shard_mb=args.shard_mb)
    source = open_source(args.source)
    tokenizer = _tokenizer(args)
    before = read_manifest(args.out) if args.out.is_dir() else None
    started = time.perf_counter()
    manifest = prepare_tokens(source, tokenizer, args.out, settings)
    elapsed = time.perf_counter() - started
    n_shards = len(manifest["shards"])
    made = (
        f"{manifest['tokens']:,} tokens ({manifest['dtype']}) in {n_shards} shard{'s' * (n_shards != 1)}, "
        f"{manifest['documents']:,} documents, from {manifest['source']}"
    )
    if before is not None and before["complete"] and before["shards"] == manifest["shards"]:
        print(f"{args.out} already holds them: {made}")
    else:
        resumed = f", resumed after shard {len(before['shards'])}" if before and before["shards"] else ""
        size, done = manifest.get("source_bytes"), f"{elapsed:.1f} s"
        if size and not resumed:
            done += f", {size / 1e6 / elapsed:.1f} MB/s"
        print(f"{args.out}: {made} ({done}{resumed})")
    print(f"train on it: transformer train --set train.data={args.out} --set train.tokenizer={args.out}/tokenizer.json")
    return 0


def _tokenizer(args: argparse.Namespace) -> Any:
    """The tokenizer to prepare with: the folder's own when it has one (resuming), else --tokenizer."""
    from transformer.commands.errors import CommandError
    from transformer.data.shards import TOKENIZER, read_manifest
    from transformer.data.sources import DEFAULT_SAMPLE_MB, sample_documents
    from transformer.data.tokenizer import KINDS, TextTokenizer, train_tokenizer

    kind = args.tokenizer if args.tokenizer in KINDS else None
    if kind == "bpe" and args.vocab_size is None:
        raise CommandError("--tokenizer bpe needs --vocab-size, e.g. 4096")
    if kind is None and (args.vocab_size is not None or args.sample_mb is not None):
        raise CommandError("--vocab-size and --sample-mb go with --tokenizer char|bpe (a tokenizer to learn)")
    given = None if kind else TextTokenizer.load(Path(args.tokenizer))
    if read_manifest(args.out) is not None and (args.out / TOKENIZER).is_file():
        own = TextTokenizer.load(args.out / TOKENIZER)
        if (kind is not None and own.kind != kind) or (given is not None and given.fingerprint() != own.fingerprint()):
            raise CommandError(
                f"{args.out} was started with another tokenizer ({own.kind}, {own.vocab_size:,} ids): "
                f"pass --tokenizer {args.out / TOKENIZER} to resume, or use another --out"
            )
        return own
    if given is not None:
        return given
    sample_mb = DEFAULT_SAMPLE_MB if args.sample_mb is None else args.sample_mb
    if sample_mb < 1:
        raise CommandError(f"--sample-mb must be at least 1, got {sample_mb}")
    return train_tokenizer(kind or "char", sample_documents(args.source, sample_mb << 20), args.vocab_size)


def _verify(args: argparse.Namespace) -> int:
    from transformer.data.prepare import PrepareSettings
    from transformer.data.verify import verify_prepared

    report = verify_prepared(args.folder, PrepareSettings(workers=args.workers, memory_mb=args.memory_mb))
    print(f"{args.folder}: all {report['tokens']:,} tokens and {report['documents']:,} document ends match the source")
    if not report["identity_unchanged"]:
        print("  (the source's file sizes or modification times changed since it was prepared; its text did not)")
    return 0
