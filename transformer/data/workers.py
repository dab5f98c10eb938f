"""Encoding on every core, in order, with a bounded number of texts in flight.

Python's bulk encoding (transformer/data/bulk.py) holds the GIL, so parallel means processes. Each
worker is started with "spawn" (a fresh interpreter: no torch, no inherited threads, nothing of
HF's thread pool forked half-way) and builds its own encoder from the tokenizer's JSON. The
caller's batches go out in order and come back in order; at most `in_flight` are out at once, so
memory does not grow with the corpus when the reader is faster than the encoders
(`ProcessPoolExecutor.map` would read the whole input first). As with any use of "spawn", a
script that prepares with several workers must start from `if __name__ == "__main__":`, since
each worker imports the script's module (the `transformer` command already does).
"""

import multiprocessing
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, TypeVar

import numpy as np

from transformer.data.bulk import BulkEncoder, Ids
from transformer.data.tokenizer import TextTokenizer

T = TypeVar("T")
_encoder: BulkEncoder | None = None


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def encode_in_order(
    tokenizer: TextTokenizer,
    dtype: np.dtype[Any],
    batches: Iterator[tuple[T, list[str]]],
    workers: int,
    in_flight: int,
    memo_entries: int,
) -> Iterator[tuple[T, list[Ids]]]:
    """(tag, ids of each text) for every (tag, texts) of `batches`, in their order."""
    if workers <= 1 or type(tokenizer) is not TextTokenizer:  # a subclass cannot travel as JSON
        encoder = BulkEncoder(tokenizer, dtype, memo_entries)
        for tag, texts in batches:
            yield tag, [encoder.encode(text) for text in texts]
        return
    BulkEncoder(tokenizer, dtype, 1)  # refuses an unsuitable tokenizer here, not in every worker
    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(tokenizer.to_json(), dtype.str, memo_entries),
    )
    pending: deque[tuple[T, Future[list[Ids]]]] = deque()
    try:
        for tag, texts in batches:
            pending.append((tag, pool.submit(_encode, texts)))
            if len(pending) >= max(in_flight, workers):
                done_tag, future = pending.popleft()
                yield done_tag, future.result()
        while pending:
            done_tag, future = pending.popleft()
            yield done_tag, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _start_worker(tokenizer_json: str, dtype: str, memo_entries: int) -> None:
    global _encoder
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker: the pool is the parallelism
    _encoder = BulkEncoder(TextTokenizer.from_json(tokenizer_json), np.dtype(dtype), memo_entries)


def _encode(texts: list[str]) -> list[Ids]:
    assert _encoder is not None, "the worker was not started by encode_in_order"
    return [_encoder.encode(text) for text in texts]
