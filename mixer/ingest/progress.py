"""Progress of `mixer tokenize`: moves within tasks, rates in text MB/s, with or without a TTY.

Workers report what they have done so far in a task (documents, tokens, input bytes consumed,
UTF-8 text bytes) after each encoded batch, at most every `REPORT_INTERVAL_S` (a callback in
this process, a tiny actor on Ray: `mixer.ingest.executors`). The bar's fraction is input bytes
(what the plan's task weights count, compressed for .gz/.zst and parquet); the rate is text
bytes per second, the unit of BENCHMARKS.md. On a terminal it is a tqdm bar; otherwise (a log,
a pseudo-terminal without isatty) a plain line every `PLAIN_INTERVAL_S`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

REPORT_INTERVAL_S = 0.5  # workers report at least this often while tokenizing (2x a second)
PLAIN_INTERVAL_S = 5.0  # a line this often when stderr is not a terminal


@dataclass
class Done:
    """Work done in one task so far, or a delta of it: what workers report."""

    documents: int = 0
    tokens: int = 0
    input_bytes: int = 0
    text_bytes: int = 0

    def add(self, other: Done) -> None:
        self.documents += other.documents
        self.tokens += other.tokens
        self.input_bytes += other.input_bytes
        self.text_bytes += other.text_bytes


class TaskReporter:
    """One task's side: counts its batches and hands `report` what is new, at most every
    `REPORT_INTERVAL_S` (no reports at all when `report` is None, only the counting)."""

    def __init__(self, report: Callable[[Done], None] | None, input_bytes: Callable[[], int]):
        self.report, self.input_bytes = report, input_bytes
        self.text_bytes = 0
        self.pending = Done()
        self.seen_input = 0
        self.last = time.monotonic()

    def batch(self, documents: int, tokens: int, texts: list[str]) -> None:
        size = text_bytes(texts)
        self.text_bytes += size
        self.pending.add(Done(documents, int(tokens), 0, size))
        if self.report is not None and time.monotonic() - self.last >= REPORT_INTERVAL_S:
            read = self.input_bytes()
            self.pending.input_bytes, self.seen_input = read - self.seen_input, read
            self.report(self.pending)
            self.pending, self.last = Done(), time.monotonic()


def text_bytes(texts: list[str]) -> int:
    """UTF-8 bytes of documents, encoding only the ones that are not ASCII."""
    return sum(len(t) if t.isascii() else len(t.encode("utf-8", "surrogatepass")) for t in texts)


def mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


class Progress:
    """Totals of a run, shown on `stream` (the caller's: the CLI hands it stderr) as a bar when
    it is a terminal, else as a plain line every `PLAIN_INTERVAL_S`; not shown when None."""

    def __init__(self, total_bytes: int, total_shards: int, stream: TextIO | None):
        self.total_bytes = max(1, total_bytes)
        self.total_shards = total_shards
        self.shards = 0
        self.done = Done()  # this run's work (reused shards not counted)
        self.reused_bytes = 0
        self.partial: dict[str, Done] = {}  # running tasks: what they reported so far
        self.finished: set[str] = set()
        self.started = self.last_line = time.perf_counter()
        self.stream = stream or None
        self.enabled = self.stream is not None
        self.tty = self.enabled and self.stream.isatty()
        self.bar = None
        if self.enabled and self.tty:
            from tqdm import tqdm

            self.bar = tqdm(
                total=self.total_bytes,
                desc="tokenize",
                file=self.stream,
                dynamic_ncols=True,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix} [{elapsed}<{remaining}]",
                mininterval=0.2,
            )

    # -- what executors call
    def reused(self, nbytes: int, shards: int) -> None:
        self.shards += shards
        self.reused_bytes += nbytes
        self._show()

    def advance(self, name: str, delta: Done) -> None:
        """A running task's report (a delta); ignored once the task has finished."""
        if name in self.finished:
            return
        self.partial.setdefault(name, Done()).add(delta)
        self.done.add(delta)
        self._show()

    def finish(self, name: str, weight: int, entry: dict, text: int | None = None) -> None:
        """A task finished: its exact counts replace what it reported while running."""
        reported = self.partial.pop(name, Done())
        self.finished.add(name)
        self.shards += 1
        exact = Done(
            entry["documents"],
            entry["tokens"],
            weight,
            reported.text_bytes if text is None else text,
        )
        self.done.add(
            Done(
                exact.documents - reported.documents,
                exact.tokens - reported.tokens,
                exact.input_bytes - reported.input_bytes,
                exact.text_bytes - reported.text_bytes,
            )
        )
        self._show()

    def close(self) -> None:
        if self.bar is not None:
            self._show(force=True)
            self.bar.close()

    # -- display
    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def rate(self) -> float:
        """Text bytes per second over this run."""
        return self.done.text_bytes / max(self.seconds, 1e-9)

    def describe(self) -> str:
        return (
            f"{mb(self.done.text_bytes)} of text at {self.rate() / 1e6:,.1f} MB/s, "
            f"tasks {self.shards}/{self.total_shards}, docs {self.done.documents:,}, "
            f"tokens {self.done.tokens:,}"
        )

    def _show(self, force: bool = False) -> None:
        if not self.enabled:
            return
        read = min(self.total_bytes, self.reused_bytes + self.done.input_bytes)
        if self.bar is not None:
            self.bar.n = read
            self.bar.set_postfix_str(self.describe(), refresh=False)
            self.bar.refresh() if force else self.bar.update(0)
            return
        now = time.perf_counter()
        if now - self.last_line >= PLAIN_INTERVAL_S:
            self.last_line = now
            percent = 100 * read / self.total_bytes
            self.stream.write(
                f"mixer tokenize: {percent:3.0f}% {self.describe()}, {self.seconds:.0f}s\n"
            )
            self.stream.flush()
