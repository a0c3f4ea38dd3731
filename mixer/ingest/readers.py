"""Stream the documents of one task: record decoding, text fields, filters, `file:line` errors."""

from __future__ import annotations

import collections
import contextlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from mixer.errors import InputError, MixerError
from mixer.ingest.files import (
    IO_CHUNK,
    SNIFF_BYTES,
    CountingReader,
    arrow_errors,
    check_text,
    check_text_column,
    decompress_errors,
    decompressed,
    open_input,
)
from mixer.ingest.matches import Probe
from mixer.ingest.where import MISSING, RowFilter, get_field

if TYPE_CHECKING:
    from mixer.ingest.inputs import FileGroup, Task

_PARQUET_BATCH_ROWS = 1024


MAX_DOCUMENT_BYTES = 16 << 20
"""Default bound on one record (a jsonl line, a txt document or line, a parquet text value).

Longer records are an error naming `file:line`, or counted as `too_large` under skip, and are
never held whole: a line is read at most this far. 16 MiB is far above real documents (a long
book is a few MB) and keeps the tokenizer's memory for one document bounded: HF tokenizers
peaks at about 200 bytes per input byte (BENCHMARKS.md, "Verification sample"), so ~3.3 GB
here."""


def _too_large(limit: int) -> _BadRecord:
    return _BadRecord(
        "too_large",
        f"record longer than {limit:,} bytes (max_document_bytes=); raise the bound, or pass "
        "on_error='skip' to count and leave out such records",
        params=("max_document_bytes", "on_error"),
    )


@dataclass(frozen=True)
class ReadOptions:
    """How records become documents; shipped to every worker, so it must stay small.

    Built from a validated `TokenizeJob` (or `mixer peek`'s arguments): no checks of its own."""

    text_field: str = "text"
    txt_mode: str = "document"
    on_error: str = "fail"
    where: tuple[RowFilter, ...] = ()
    storage_options: dict = field(default_factory=dict, hash=False)
    max_document_bytes: int = MAX_DOCUMENT_BYTES


@dataclass
class ReadStats:
    """Counters one `read_documents` call fills in, for the shard's manifest entry."""

    documents: int = 0
    filtered: int = 0
    skipped: collections.Counter = field(default_factory=collections.Counter)
    bytes_read: int = 0
    records: int = 0  # records (lines, rows) read so far, blank and bad ones included
    probe: Probe = field(default_factory=Probe)  # per-input match checks (mixer.ingest.matches)
    parts: list[ReadStats] = field(default_factory=list)  # a group's, per file read so far

    def add(self, other: ReadStats) -> None:
        """Count what `other` counted as well."""
        self.documents += other.documents
        self.filtered += other.filtered
        self.skipped.update(other.skipped)
        self.bytes_read += other.bytes_read
        self.records += other.records
        self.probe.merge(other.probe)


# Reading
class _BadRecord(Exception):
    """A record that cannot become a document; `reason` is the key counted in `skipped`,
    `params` the parameters `detail` names (as `MixerError.params`)."""

    def __init__(self, reason: str, detail: str, params: tuple[str, ...] = ()) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.params = params


def read_numbered(
    task: Task | FileGroup, options: ReadOptions, stats: ReadStats, limit: int | None = None
) -> Iterator[tuple[int, str]]:
    """Stream (record, document) for one task, updating `stats` as it goes.

    `record` is the document's provenance within the task, 0-based: the line number counted
    from the task's first line (blank and skipped lines included) for line formats, the row
    number from the task's first row for parquet, 0 for a whole-file txt document. The task's
    first record in its file is the sum of `stats.records` over the tasks before it there. A
    `FileGroup` reads its files in order and counts records across them (its second file's first
    record is the first file's record count); `stats.parts` gets each file's own counts, added
    to `stats` once the file is read. `limit` stops after that many documents (a trial, see
    `TokenizeJob.limit`): `stats` then count what was read up to the last one, and a group's
    `stats.parts` only the files read.

    Bad records raise `InputError("file:line: why")` (parquet: `file:row N:`, N 0-based within
    the file) or, with `on_error="skip"`, are counted in `stats.skipped`. A damaged or truncated
    file is an `InputError` in both modes.
    """
    single = len(task.parts) == 1
    yielded = 0
    for part in task.parts:
        own = stats if single else ReadStats()
        if not single:
            stats.parts.append(own)
        with contextlib.closing(_read_part(part, options, own)) as documents:
            for record, text in documents:
                yield (record if single else stats.records + record), text
                yielded += 1
                if yielded == limit:
                    break
        if not single:
            stats.add(own)
        if yielded == limit:
            return


def _read_part(task: Task, options: ReadOptions, stats: ReadStats) -> Iterator[tuple[int, str]]:
    # Records orjson parsed (exact dicts from the fast JSON path) hold no lone surrogate: orjson
    # refuses them, and what it refuses comes back from `json` as a `_StdlibRecord`. A dotted
    # text field may go through a JSON string that `get_field` decodes with `json`: checked.
    if task.format.startswith("jsonl") and not options.where and "." not in options.text_field:
        return _jsonl_numbered(task, options, stats)
    return _numbered(task, options, stats)


def _numbered(task: Task, options: ReadOptions, stats: ReadStats) -> Iterator[tuple[int, str]]:
    if task.format == "parquet":
        records: Iterator[tuple[Any, Any]] = _parquet_records(task, options, stats)
    elif task.format.startswith("txt") and options.txt_mode == "document":
        if task.byte_range is not None:
            raise MixerError(f"{task.url}: a byte range task needs txt_mode='line'")
        records = _txt_document(task, options, stats)
    else:
        records = _line_records(task, options, stats)
    for where, item in records:
        text = _settle(task, options, stats, where, item, False)
        if text is not None:
            stats.documents += 1
            yield stats.records - 1, text


def _settle(
    task: Task, options: ReadOptions, stats: ReadStats, where: Any, item: Any, encodable: bool
) -> str | None:
    """The document of one record, or None when it is filtered out or skipped (counted);
    a bad record under on_error="fail" raises `InputError` naming `task.url:where()`."""
    try:
        if isinstance(item, _BadRecord):
            raise item
        return _document(item, options, stats, encodable)
    except _BadRecord as bad:
        if options.on_error == "skip":
            stats.skipped[bad.reason] += 1
            return None
        raise InputError(f"{task.url}:{where()}: {bad.detail}", params=bad.params) from None


def _jsonl_numbered(
    task: Task, options: ReadOptions, stats: ReadStats
) -> Iterator[tuple[int, str]]:
    """`read_numbered` of a jsonl task without filters or a dotted text field, in one loop.

    A line whose orjson dict holds a non-empty str text of at most max_document_bytes / 4
    characters (so at most that many UTF-8 bytes) is a document right here, with the counts
    `_document_of`'s unfiltered path makes; every other line (the task's first record, which
    the probe looks at, blank, malformed, too long, missing or odd text) goes through
    `_line_item` and `_settle` like any line format's. Same documents, numbers, counts and
    errors: the per-line calls and generator levels it saves are a third of reading
    (BENCHMARKS.md, "Tokenize pipeline")."""
    lines = _Lines(task, options, stats)
    field, short, probe = options.text_field, options.max_document_bytes // 4, stats.probe
    loads, refused = orjson.loads, orjson.JSONDecodeError
    for line in lines:
        if line.__class__ is bytes and probe.records:
            try:
                record = loads(line)  # JSON allows the line break left at the end
            except refused:
                record = None
            if record.__class__ is dict:
                text = record.get(field)
                if text.__class__ is str and 0 < len(text) <= short:
                    probe.records += 1
                    probe.matched += 1
                    stats.documents += 1
                    yield stats.records - 1, text
                    continue
        item = _line_item(line, True, True)
        if item is None:
            continue
        text = _settle(task, options, stats, lines.lineno, item, item.__class__ is dict)
        if text is not None:
            stats.documents += 1
            yield stats.records - 1, text


def read_documents(task: Task | FileGroup, options: ReadOptions, stats: ReadStats) -> Iterator[str]:
    """The documents of `read_numbered`, without their record numbers."""
    for _, text in read_numbered(task, options, stats):
        yield text


def read_records(task: Task, options: ReadOptions) -> Iterator[tuple[Any, Any]]:
    """(line number thunk, record) of a line or txt task, before filters and text fields: a
    dict, a str (txt), or a bad record (an exception instance); used by `mixer peek`."""
    stats = ReadStats()
    if task.format.startswith("txt") and options.txt_mode == "document":
        return _txt_document(task, options, stats)
    return _line_records(task, options, stats)


def _document(
    item: Any, options: ReadOptions, stats: ReadStats, encodable: bool = False
) -> str | None:
    """The document of one record (a str for txt, a dict otherwise); None when filtered out.

    `encodable`: the record's strings are known to encode as UTF-8 (no lone surrogate), so the
    text's check is skipped (a re-encode of every non-ASCII document otherwise)."""
    try:
        return _document_of(item, options, stats, encodable)
    except RecursionError:  # a field holding JSON text nested thousands deep (get_field)
        raise _BadRecord("malformed_json", "a field's JSON is nested too deeply") from None


def _document_of(item: Any, options: ReadOptions, stats: ReadStats, encodable: bool) -> str | None:
    if isinstance(item, str):
        text: object = item
        name = "line"
    else:
        probe = stats.probe
        if options.where or not probe.records:
            if not probe.admit(item, options.where):
                stats.filtered += 1
                return None
        else:  # the unfiltered hot path: only the count
            probe.records += 1
            probe.matched += 1
        name = repr(options.text_field)
        text = get_field(item, options.text_field)
        if text is MISSING or text is None:
            stats.probe.text_missing += 1
            detail = f"no field {name}" if text is MISSING else f"field {name} is null"
            raise _BadRecord("missing_text", detail)
        if isinstance(text, bytes):
            text = _decode(text)
        if not isinstance(text, str):
            raise _BadRecord("non_string_text", f"field {name} is {type(text).__name__}, not text")
        limit = options.max_document_bytes
        if len(text) > limit or (
            len(text) * 4 > limit and len(text.encode("utf-8", "replace")) > limit
        ):
            raise _too_large(limit)
        if not encodable and not text.isascii():
            try:
                text.encode("utf-8")  # a JSON "\\ud800" escape decodes to a lone surrogate
            except UnicodeEncodeError as e:
                detail = f"field {name} has a lone surrogate at character {e.start}"
                raise _BadRecord("invalid_utf8", detail) from None
    if not text:
        raise _BadRecord("empty_text", f"{name} is empty")
    return text


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _BadRecord("invalid_utf8", f"invalid UTF-8 at byte {e.start}") from None


def _too_long(line: bytes, limit: int) -> bool:
    """Whether `line`, read with `readline(limit + 2)`, holds more than `limit` bytes before
    its line break (it may then be cut short)."""
    if len(line) <= limit:
        return False
    return len(line) - (2 if line.endswith(b"\r\n") else 1 if line.endswith(b"\n") else 0) > limit


def _skip_line(line: bytes, readline: Any) -> int:
    """Read (and drop) the rest of a line begun by `line`; the bytes skipped."""
    skipped = 0
    while not line.endswith(b"\n"):
        line = readline(IO_CHUNK)
        if not line:
            break
        skipped += len(line)
    return skipped


def _line_records(task: Task, options: ReadOptions, stats: ReadStats) -> Iterator[tuple[Any, Any]]:
    """(line number thunk, record or `_BadRecord`) for each line of a jsonl or txt-line task."""
    lines = _Lines(task, options, stats)
    is_json = task.format.startswith("jsonl")
    fast = not options.where
    for line in lines:
        item = _line_item(line, is_json, fast)
        if item is not None:  # blank lines (typically at the end of a file) are not records
            yield lines.lineno, item


def _line_item(line: bytes | _BadRecord, is_json: bool, fast: bool) -> Any:
    """The record of one raw line (`_parse_json`'s or its text), a `_BadRecord`, or None for
    a blank line."""
    if isinstance(line, _BadRecord):
        return line
    if line.endswith(b"\n"):
        line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
    try:
        return _parse_json(line, fast) if is_json else _decode(line)
    except _BadRecord as bad:
        return bad


def _parse_json(line: bytes, fast: bool = True) -> dict | None:
    """The JSON object on one line; None for a blank line.

    With `fast`, orjson parses the bytes (faster: BENCHMARKS.md, "Tokenize pipeline") and
    whatever it refuses (invalid UTF-8, lone surrogate escapes, NaN, huge numbers, blank
    lines) is parsed again by `json`, so the lines accepted, their strings and the error
    messages are the standard library's. One difference remains: integers beyond 64 bits
    become floats. A where filter could see that, so filtered reads pass fast=False.
    """
    record: Any = _BLANK
    if fast:
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            record = _parse_json_stdlib(line)
            if record.__class__ is dict:  # may hold lone surrogates: read_numbered checks
                record = _StdlibRecord(record)
    else:
        record = _parse_json_stdlib(line)
    if record is _BLANK:
        return None
    if not isinstance(record, dict):
        raise _BadRecord("malformed_json", f"expected a JSON object, got {type(record).__name__}")
    return record


_BLANK = object()


class _StdlibRecord(dict):
    """A record `json` parsed after orjson refused its line: its strings may hold lone
    surrogates (a JSON "\\ud800" escape), which orjson never returns."""


def _parse_json_stdlib(line: bytes) -> Any:
    text = _decode(line)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        if not text.strip():
            return _BLANK
        at = "" if e.msg.endswith(" at") else " at"  # "Unterminated string starting at"
        raise _BadRecord(
            "malformed_json", f"malformed JSON: {e.msg}{at} column {e.colno}"
        ) from None
    except RecursionError:
        raise _BadRecord("malformed_json", "malformed JSON: nested too deeply") from None


class _Lines:
    """Raw lines of a line task; knows each line's 1-based number, computed lazily for ranges."""

    def __init__(self, task: Task, options: ReadOptions, stats: ReadStats) -> None:
        self.task, self.options, self.stats = task, options, stats
        self.count = 0  # lines read so far in this task
        self.first = 0  # byte offset of the task's first line (uncompressed formats)
        self._before: int | None = None

    def __iter__(self) -> Iterator[bytes | _BadRecord]:
        task, stats = self.task, self.stats
        start, stop = task.byte_range or (0, None)
        with open_input(task.url, self.options.storage_options) as raw:
            limit = self.options.max_document_bytes
            if task.format.endswith((".gz", ".zst")):
                stream = decompressed(raw, task.url, task.format, stats)
                check_text(
                    decompress_errors(stream.peek, task.url)(SNIFF_BYTES), task.url, task.format
                )
                readline = decompress_errors(stream.readline, task.url)
                while line := readline(limit + 2):
                    self.count += 1
                    stats.records += 1
                    if len(line) > limit and _too_long(line, limit):
                        _skip_line(line, readline)
                        yield _too_large(limit)
                    else:
                        yield line
                return
            if start > 0:
                raw.seek(start - 1)
            stream = io.BufferedReader(CountingReader(raw, None), IO_CHUNK)
            pos = start
            if start > 0:
                pos += len(stream.readline()) - 1  # the rest of a line owned by the range before
            self.first = pos
            check_text(stream.peek(SNIFF_BYTES)[:SNIFF_BYTES], task.url, task.format)
            while stop is None or pos < stop:
                line = stream.readline(limit + 2)
                if not line:
                    break
                pos += len(line)
                stats.bytes_read += len(line)
                self.count += 1
                stats.records += 1
                if len(line) > limit and _too_long(line, limit):
                    rest = _skip_line(line, stream.readline)
                    pos += rest
                    stats.bytes_read += rest
                    yield _too_large(limit)
                else:
                    yield line

    def lineno(self) -> int:
        """1-based number of the last line read, in the whole (decompressed) file."""
        if self._before is None:
            self._before = 0
            if self.first > 0:
                self._before = _count_newlines(self.task.url, self.first, self.options)
        return self._before + self.count


def _count_newlines(url: str, end: int, options: ReadOptions) -> int:
    count = 0
    with open_input(url, options.storage_options) as raw:
        while end > 0:
            data = raw.read(min(IO_CHUNK, end))
            if not data:
                break
            count += data.count(b"\n")
            end -= len(data)
    return count


def _txt_document(task: Task, options: ReadOptions, stats: ReadStats) -> Iterator[tuple[Any, Any]]:
    """A whole text file is one document (it has to fit in memory as a string anyway)."""
    limit = options.max_document_bytes
    with open_input(task.url, options.storage_options) as raw:
        if task.format == "txt":
            data = raw.read(limit + 1)
            stats.bytes_read += len(data)
        else:
            stream = decompressed(raw, task.url, task.format, stats)
            data = decompress_errors(stream.read, task.url)(limit + 1)
    check_text(data[:SNIFF_BYTES], task.url, task.format)
    if len(data) > limit:
        stats.records += 1
        yield (lambda: 1), _too_large(limit)
        return
    try:
        item: Any = data.decode("utf-8")
        line = 1
    except UnicodeDecodeError as e:
        item = _BadRecord("invalid_utf8", f"invalid UTF-8 at byte {e.start}")
        line = data.count(b"\n", 0, e.start) + 1
    del data
    stats.records += 1
    yield (lambda: line), item


def _parquet_records(
    task: Task, options: ReadOptions, stats: ReadStats
) -> Iterator[tuple[Any, Any]]:
    """(row thunk, record) for each row, reading only the columns the options need."""
    import pyarrow.parquet as pq

    with open_input(task.url, options.storage_options) as raw:
        with arrow_errors(task.url):
            pf = pq.ParquetFile(raw)
            names = pf.schema_arrow.names
            check_text_column(task.url, pf, options.text_field)
            md = pf.metadata
        wanted = [options.text_field] + [f.field for f in options.where]
        columns = sorted({p if p in names else p.split(".")[0] for p in wanted} & set(names))
        first, stop = task.row_groups or (0, md.num_row_groups)
        row = sum(md.row_group(i).num_rows for i in range(first))
        for group in range(first, stop):
            batches = pf.iter_batches(
                batch_size=_PARQUET_BATCH_ROWS, row_groups=[group], columns=columns
            )
            while True:
                with arrow_errors(task.url):
                    batch = next(batches, None)
                    rows = batch.to_pylist() if batch is not None else None
                if rows is None:
                    break
                for record in rows:
                    n = row
                    stats.records += 1
                    yield (lambda n=n: f"row {n}"), record
                    row += 1
            rg = md.row_group(group)
            stats.bytes_read += sum(
                rg.column(c).total_compressed_size for c in range(md.num_columns)
            )
