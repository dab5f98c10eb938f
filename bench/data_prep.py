"""Corpus preparation: throughput and peak memory of `transformer data prepare`, by corpus size.

The corpora are made by repeating a text given by path (e.g. tinyshakespeare.txt) up to 10 MB,
100 MB and 1 GB (`--sizes`, in MB), cut at a line end. Each row is the real command, started
as a subprocess from the repository root,

    python -m transformer data prepare CORPUS --tokenizer TOKENIZER.json --out DIR --workers W

with a char tokenizer and a byte-level BPE (`--vocab-size`, 4096) learned from the text itself,
and 1 and 2 worker processes. Per row:

- "MB/s": corpus bytes over the command's own preparation time (it prints it: reading,
  encoding, writing and fsyncing the shards, starting the workers; not the interpreter's
  start), and "wall s", the whole subprocess;
- "peak RSS": the largest sum of resident sets over the command's process tree (the reader and
  its workers), sampled every 50 ms from /proc (Linux only; a sampled peak can miss a short
  spike). Not `ru_maxrss`: Linux carries it over from the parent through fork and exec, so a
  child would report the bench's own peak.

A repeated text flatters byte-level BPE: after the first copy every segment is in the memo
(transformer/data/bulk.py), so the rows measure the memo's hit path. The "cold" line is one
copy of the text prepared in this process, every segment new: the rate on text never seen.

Last, the training start: `transformer train` on the largest prepared corpus (tiny-plain model),
timed from launch to the trainer's first line ("... training tokens ..."), which follows
opening the prepared folder and building the model; and `open_prepared` alone, in process.

Goals (2 cores): peak RSS <= 1.5 GB at every size, flat; >= 10 MB/s char, >= 5 MB/s BPE; a
training start on a prepared 1 GB corpus in <= 5 s.

Run from the repository root:
    python bench/data_prep.py --text PATH/tinyshakespeare.txt [--sizes 10,100,1000] [--kinds char,bpe]
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_speed import tree_rss_kib  # noqa: E402  (bench scripts import each other from here)


@dataclass
class Row:
    size_mb: int
    kind: str
    workers: int
    mb_per_s: float
    wall_s: float
    peak_rss_mib: float | None
    tokens: int


def make_corpus(text: Path, size_mb: int, folder: Path) -> Path:
    corpus = folder / f"corpus-{size_mb}MB.txt"
    data = text.read_bytes()
    if not data.endswith(b"\n"):
        data += b"\n"
    target = size_mb * 10**6
    with open(corpus, "wb") as file:
        written = 0
        while written < target:
            piece = data[: target - written] if written + len(data) > target else data
            if len(piece) < len(data):
                piece = piece[: piece.rfind(b"\n") + 1] or piece
            file.write(piece)
            written += len(piece)
            if len(piece) < len(data):
                break
    return corpus


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("TRANSFORMER_TYPECHECK", None)
    return env


def prepare(corpus: Path, tokenizer: Path, workers: int, memory_mb: int, out: Path) -> Row:
    argv = [sys.executable, "-m", "transformer", "data", "prepare", str(corpus), "--tokenizer", str(tokenizer)]
    argv += ["--out", str(out), "--workers", str(workers), "--memory-mb", str(memory_mb)]
    began = time.perf_counter()
    child = subprocess.Popen(argv, cwd=REPO, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = 0
    while True:
        pid, status = os.waitpid(child.pid, os.WNOHANG)
        if pid:
            break
        if sys.platform == "linux":
            peak = max(peak, tree_rss_kib(child.pid))
        time.sleep(0.05)
    wall = time.perf_counter() - began
    child.returncode = os.waitstatus_to_exitcode(status)
    out_text = child.stdout.read().decode() if child.stdout else ""
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {child.returncode}:\n{out_text}")
    found = re.search(r"([\d,]+) tokens .*\((\d+\.\d+) s, (\d+\.\d+) MB/s\)", out_text)
    if found is None:
        raise RuntimeError(f"no summary line in:\n{out_text}")
    return Row(
        size_mb=0,
        kind="",
        workers=workers,
        mb_per_s=float(found.group(3)),
        wall_s=wall,
        peak_rss_mib=peak / 1024 if sys.platform == "linux" else None,
        tokens=int(found.group(1).replace(",", "")),
    )


def training_start(prepared: Path, scratch: Path) -> float:
    """Seconds from launching `transformer train` to its first line (data opened, model built)."""
    argv = [sys.executable, "-m", "transformer", "train", "--config", str(REPO / "configs" / "tiny-plain.yaml")]
    for setting in (
        f"train.data={prepared}",
        f"train.tokenizer={prepared / 'tokenizer.json'}",
        "train.max_steps=1",
        "train.sample_tokens=0",
        f"train.out_dir={scratch / 'run'}",
    ):
        argv += ["--set", setting]
    began = time.perf_counter()
    child = subprocess.Popen(argv, cwd=REPO, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert child.stdout is not None
    seconds = None
    for line in child.stdout:
        if b"training tokens" in line:
            seconds = time.perf_counter() - began
            break
    child.kill()
    child.wait()
    if seconds is None:
        raise RuntimeError("the trainer never announced its data")
    return seconds


def open_seconds(prepared: Path) -> float:
    from transformer.data.tokens import open_prepared

    began = time.perf_counter()
    open_prepared(prepared, None, 0.1)
    return time.perf_counter() - began


def cold_rate(text: Path, tokenizer: Path, scratch: Path) -> float:
    from transformer.data.prepare import PrepareSettings, prepare_tokens
    from transformer.data.sources import open_source
    from transformer.data.tokenizer import TextTokenizer

    began = time.perf_counter()
    prepare_tokens(open_source(str(text)), TextTokenizer.load(tokenizer), scratch / "cold", PrepareSettings(workers=1))
    return text.stat().st_size / 1e6 / (time.perf_counter() - began)


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--text", type=Path, required=True, help="the text to repeat")
    parser.add_argument("--sizes", default="10,100,1000", help="corpus sizes in MB")
    parser.add_argument("--kinds", default="char,bpe")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--memory-mb", type=int, default=512)
    parser.add_argument("--scratch", type=Path, default=None, help="where corpora go (default: a temporary folder)")
    args = parser.parse_args()

    from transformer.data.tokenizer import train_tokenizer

    sizes = [int(s) for s in args.sizes.split(",")]
    kinds, workers = args.kinds.split(","), [int(w) for w in args.workers.split(",")]
    scratch = Path(tempfile.mkdtemp(prefix="data_prep_", dir=args.scratch))
    print(f"{os.cpu_count()} cores; load average {load()} at the start")
    text = args.text.read_text(encoding="utf-8")
    tokenizers = {}
    for kind in kinds:
        tokenizers[kind] = scratch / f"{kind}.json"
        train_tokenizer(kind, [text], None if kind == "char" else args.vocab_size).save(tokenizers[kind])
    rows: list[Row] = []
    largest: Path | None = None
    try:
        for size in sizes:
            corpus = make_corpus(args.text, size, scratch)
            for kind in kinds:
                for count in workers:
                    out = scratch / f"prepared-{size}-{kind}-{count}"
                    row = prepare(corpus, tokenizers[kind], count, args.memory_mb, out)
                    row.size_mb, row.kind = size, kind
                    rows.append(row)
                    print(
                        f"  {size} MB {kind} x{count}: {row.mb_per_s:.1f} MB/s, peak {row.peak_rss_mib or 0:.0f} MiB "
                        f"(load {load()})",
                        flush=True,
                    )
                    if size == sizes[-1] and largest is None:
                        largest = out  # kept for the start measurement
                    else:
                        shutil.rmtree(out)
            corpus.unlink()
        print()
        print(f"{'size':>7} {'kind':>4} {'workers':>7} {'MB/s':>7} {'wall s':>7} {'peak RSS':>9} {'tokens':>14}")
        for row in rows:
            peak = f"{row.peak_rss_mib:.0f} MiB" if row.peak_rss_mib is not None else "n/a"
            print(
                f"{row.size_mb:>4} MB {row.kind:>4} {row.workers:>7} {row.mb_per_s:>7.1f} {row.wall_s:>7.1f} "
                f"{peak:>9} {row.tokens:>14,}"
            )
        print()
        for kind in kinds:
            for count in workers:
                mine = [r for r in rows if r.kind == kind and r.workers == count]
                peaks = " -> ".join(f"{r.peak_rss_mib or 0:.0f}" for r in mine)
                rates = " -> ".join(f"{r.mb_per_s:.1f}" for r in mine)
                print(f"{kind} x{count}: peak RSS {peaks} MiB, MB/s {rates} (sizes {args.sizes} MB)")
        worst = max(r.peak_rss_mib or 0 for r in rows)
        print(f"peak RSS <= 1.5 GB at every size: worst {worst:.0f} MiB: {'meets' if worst <= 1536 else 'MISSES'} goal")
        for kind, goal in (("char", 10.0), ("bpe", 5.0)):
            if kind in kinds:
                best = max(r.mb_per_s for r in rows if r.kind == kind and r.size_mb == sizes[-1])
                verdict = "meets" if best >= goal else "MISSES"
                print(f"{kind} at {sizes[-1]} MB: best {best:.1f} MB/s (goal >= {goal:.0f}): {verdict} goal")
        if "bpe" in kinds:
            cold = cold_rate(args.text, tokenizers["bpe"], scratch)
            print(f"bpe, cold memo (one copy of the text, 1 process): {cold:.1f} MB/s")
        if largest is not None:
            start = training_start(largest, scratch)
            verdict = "meets" if start <= 5.0 else "MISSES"
            print(
                f"training start on the prepared {sizes[-1]} MB corpus: {start:.2f} s to the first line "
                f"(goal <= 5 s: {verdict} goal); open_prepared alone {open_seconds(largest):.3f} s"
            )
        print(f"load average {load()} at the end")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
