"""One task -> one shard: what a worker (in this process or a Ray task) runs."""

from __future__ import annotations

import contextlib
import hashlib
import json
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from mixer.ingest import inputs, readers
from mixer.ingest.encoders import TokenizerInfo, make_encoder
from mixer.ingest.progress import Done, TaskReporter
from mixer.store.format import dtype_for_vocab
from mixer.store.output import Output
from mixer.store.writer import ShardWriter

BATCH_DOCUMENTS = 512


BATCH_CHARS = 4 << 20


# Batches read ahead of the one being encoded. The engines release the GIL while encoding, so
# one reading thread (decompress, JSON, fields) overlaps the encode; at most this many batches
# of at most BATCH_CHARS each wait, so a task's memory stays bounded whatever its size.
READ_AHEAD = 2

T = TypeVar("T")


@dataclass(frozen=True)
class TaskSpec:
    """What one worker needs to write one shard; small, so it ships cheaply to Ray."""

    task: inputs.Task | inputs.FileGroup
    name: str
    key: str
    options: readers.ReadOptions
    output: Output
    backend: str
    max_documents: int | None = None
    """A trial's task: stop after this many documents (`TokenizeJob.limit`)."""


def task_key(
    task: inputs.Task | inputs.FileGroup, options: dict, tokenizer: TokenizerInfo, backend: str
) -> str:
    """Fingerprint of everything that determines a shard's bytes: reuse only on a match.

    The task's description holds its input's size and version (mtime or etag), every file's
    for a group, so a shard of an input changed since is redone."""
    material = {
        "task": task.describe(),
        "backend": backend,
        "options": options,
        "tokenizer": tokenizer.sha256,
        "eos": tokenizer.eos_id,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


class TaskStopped(Exception):
    """Raised in a task told to stop (`should_stop`): its half-written shard is already gone."""


def run_task(
    spec: TaskSpec,
    info: TokenizerInfo,
    report: Callable[[Done], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Tokenize one task into one shard and commit it with its done record; returns its entry.

    `report`, if given, is called with the work done since its last call (documents, tokens,
    input and text bytes) after encoded batches, at most every `REPORT_INTERVAL_S`; the entry
    gains `text_bytes` (UTF-8 bytes of the documents). `should_stop`, if given, is asked after
    each batch; when it says so the task removes its temporaries and raises `TaskStopped`."""
    encoder = make_encoder(info, spec.backend)
    stats = readers.ReadStats()
    writer = ShardWriter(spec.output.staging, spec.name, dtype_for_vocab(info.vocab_size))
    try:
        numbered = readers.read_numbered(spec.task, spec.options, stats, spec.max_documents)
        done = TaskReporter(report, lambda: stats.bytes_read)
        grouped = isinstance(spec.task, inputs.FileGroup)
        seen: list[tuple[np.ndarray, np.ndarray]] = []  # a group's (records, lengths) per batch
        with contextlib.closing(read_ahead(batches(numbered), READ_AHEAD)) as ahead:
            for texts, records in ahead:
                lengths, tokens = encoder.encode_batch(texts)
                writer.add_documents(lengths, tokens, records)
                if grouped:
                    seen.append((np.asarray(records), np.asarray(lengths)))
                done.batch(len(texts), len(tokens), texts)
                if should_stop is not None and should_stop():
                    raise TaskStopped(spec.name)
        entry = writer.close()
    except BaseException:
        writer.abort()
        raise
    if isinstance(spec.task, inputs.FileGroup):
        entry["inputs"] = group_inputs(spec.task, stats.parts, seen)
    else:
        entry["input"] = spec.task.describe()
    entry.update(
        backend=encoder.name,
        skipped=dict(sorted(stats.skipped.items())),
        filtered=stats.filtered,
        input_records=stats.records,
        text_bytes=done.text_bytes,
        # Dropped from the manifest (mixer.ingest.matches); a group's has one per file, since
        # its files may come from different inputs.
        probe=[p.probe.to_json() for p in stats.parts] if stats.parts else stats.probe.to_json(),
    )
    spec.output.commit_shard(spec.name, {"key": spec.key, "entry": entry})
    return entry


def group_inputs(
    group: inputs.FileGroup,
    parts: list[readers.ReadStats],
    seen: list[tuple[np.ndarray, np.ndarray]],
) -> list[dict[str, Any]]:
    """A group's shard entry `inputs`: each file's description with the records it read, the
    documents and tokens it gave (the documents' record numbers say which file each came from)
    and, when any, its skipped records. A trial's group cut short lists the files it read."""
    records = np.concatenate([r for r, _ in seen]) if seen else np.zeros(0, np.int64)
    lengths = np.concatenate([n for _, n in seen]) if seen else np.zeros(0, np.int64)
    n = len(parts)
    file_of = np.searchsorted(np.cumsum([p.records for p in parts]), records, side="right")
    tokens = np.bincount(file_of, weights=lengths, minlength=n).astype(np.int64)
    out = []
    for task, read, t in zip(group.parts[:n], parts, tokens, strict=True):
        described = {**task.describe(), "records": read.records}
        described.update(documents=read.documents, tokens=int(t))
        if read.skipped:
            described["skipped"] = dict(sorted(read.skipped.items()))
        out.append(described)
    return out


def batches(numbered: Iterator[tuple[int, str]]) -> Iterator[tuple[list[str], list[int]]]:
    """(documents, their record numbers) in batches of BATCH_DOCUMENTS, or fewer once they hold
    BATCH_CHARS characters."""
    texts: list[str] = []
    records: list[int] = []  # provenance: each document's record number (NAME.rec)
    chars = 0
    for record, text in numbered:
        texts.append(text)
        records.append(record)
        chars += len(text)
        if len(texts) >= BATCH_DOCUMENTS or chars >= BATCH_CHARS:
            yield texts, records
            texts, records, chars = [], [], 0
    if texts:
        yield texts, records


_DONE = object()


def read_ahead(items: Iterator[T], depth: int) -> Iterator[T]:
    """`items`, in order, produced by a thread that runs at most `depth` items ahead.

    An exception in `items` is raised here after the items before it. Leaving the loop early
    (an encoding error, an interrupt) stops the thread and closes `items` in it, so its files
    are closed before this returns.
    """
    if depth < 1:
        raise ValueError(f"read_ahead depth must be at least 1, got {depth}")
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        ready.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ready.put((_DONE, None))
        except BaseException as e:  # handed to the consumer, which raises it
            ready.put((_DONE, e))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="mixer-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item, error = ready.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                ready.get(timeout=0.1)
            except queue.Empty:
                pass
        thread.join()
