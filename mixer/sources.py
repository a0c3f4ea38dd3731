"""Corpus files -> documents: find inputs, split them into tasks, stream text out of a task.

The driver calls `expand_inputs` and `plan_tasks`; each worker calls `read_documents` for its own
task. Plans depend only on the files and `chunk_bytes`, never on the number of workers, so a
store's shards are reproducible. Reading streams (bounded memory, whatever the file size), and a
file that cannot be read completely is always an error: a silent partial read would quietly
drop data from a training mix.
"""

from __future__ import annotations

import ast
import collections
import contextlib
import gzip
import io
import json
import os
import re
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

import fsspec
import orjson
import zstandard
from fsspec.implementations.local import LocalFileSystem

from mixer.errors import InputError, MixerError

if TYPE_CHECKING:  # pyarrow is imported where parquet is read: 0.2 s of every start-up
    import pyarrow.parquet as pq

FORMATS: tuple[str, ...] = ("jsonl", "jsonl.gz", "jsonl.zst", "parquet", "txt", "txt.gz", "txt.zst")

# Longest suffixes first, so ".jsonl.gz" wins over a shorter match.
_EXTENSIONS: dict[str, str] = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".jsonl.gz": "jsonl.gz",
    ".json.gz": "jsonl.gz",
    ".jsonl.zst": "jsonl.zst",
    ".jsonl.zstd": "jsonl.zst",
    ".json.zst": "jsonl.zst",
    ".json.zstd": "jsonl.zst",
    ".parquet": "parquet",
    ".txt": "txt",
    ".md": "txt",
    ".txt.gz": "txt.gz",
    ".md.gz": "txt.gz",
    ".txt.zst": "txt.zst",
    ".txt.zstd": "txt.zst",
}
_SUFFIXES = sorted(_EXTENSIONS, key=len, reverse=True)
_STORE_NAMES = ("manifest.json",)
_STORE_SUFFIXES = (".bin", ".idx")

_IO_CHUNK = 1 << 20  # buffered reads from storage
_ZSTD_FEED = 128 << 10  # compressed bytes fed per zstd call: bounds each decompressed burst
_PARQUET_BATCH_ROWS = 1024
_FOOTER_THREADS = 16

MISSING: Any = type("Missing", (), {"__repr__": lambda self: "MISSING"})()
"""What `get_field` returns for an absent field, so that an explicit null stays `None`."""


# --------------------------------------------------------------------------------------------
# Row filters


_WHERE = re.compile(
    r"""^\s*(?P<field>[A-Za-z_][\w\-]*(?:\.[\w\-]+)*)
    (?:\s*(?P<cmp>==|!=|<=|>=|<|>)|\s+(?P<word>not\s+in|in)\b)
    \s*(?P<value>\S.*?)\s*$""",
    re.VERBOSE | re.DOTALL,
)
_OPS = ("==", "!=", "<", "<=", ">", ">=", "in", "not in")


@dataclass(frozen=True)
class RowFilter:
    """One `--where` condition. A row whose field is missing never matches, whatever the op."""

    field: str
    op: str
    value: object

    def matches(self, record: dict) -> bool:
        actual = get_field(record, self.field)
        if actual is MISSING:
            return False
        op, value = self.op, self.value
        try:
            if op == "==":
                return bool(actual == value)
            if op == "!=":
                return bool(actual != value)
            if op == "in":
                return actual in value  # type: ignore[operator]
            if op == "not in":
                return actual not in value  # type: ignore[operator]
            if op == "<":
                return bool(actual < value)  # type: ignore[operator]
            if op == "<=":
                return bool(actual <= value)  # type: ignore[operator]
            if op == ">":
                return bool(actual > value)  # type: ignore[operator]
            if op == ">=":
                return bool(actual >= value)  # type: ignore[operator]
        except TypeError:  # e.g. "abc" < 0.5: incomparable values do not match
            return False
        raise MixerError(f"unknown --where operator {op!r}")

    def describe(self) -> str:
        """Canonical text (parses back to an equal filter), recorded in the manifest."""
        if self.op in ("in", "not in"):
            value = "[" + ", ".join(repr(v) for v in self.value) + "]"  # type: ignore[attr-defined]
        else:
            value = repr(self.value)
        return f"{self.field} {self.op} {value}"


def parse_where(expr: str) -> RowFilter:
    """Parse `FIELD OP VALUE`, e.g. `meta.lang == "en"` or `src in ["a", "b"]`."""
    match = _WHERE.match(expr)
    if match is None:
        raise MixerError(
            f"bad --where {expr!r}: expected FIELD OP VALUE with OP one of {', '.join(_OPS)}"
        )
    op = match["cmp"] or " ".join(match["word"].split())
    text = match["value"]
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise MixerError(
            f'bad --where {expr!r}: cannot parse {text!r} as a literal (quote strings: "en")'
        ) from None
    if op in ("in", "not in"):
        if isinstance(value, (set, frozenset)):
            value = tuple(sorted(value, key=repr))
        elif isinstance(value, (list, tuple)):
            value = tuple(value)
        else:
            raise MixerError(f'bad --where {expr!r}: {op!r} needs a list, e.g. ["a", "b"]')
        scalars = value
    else:
        scalars = (value,)
    for item in scalars:
        if not (item is None or isinstance(item, (str, int, float, bool))):
            raise MixerError(
                f"bad --where {expr!r}: values must be strings, numbers, booleans or None"
            )
    return RowFilter(match["field"], op, value)


def get_field(record: dict, path: str) -> object:
    """Follow a dotted path; `MISSING` if absent.

    A key that itself contains the dots wins. An intermediate value that is a JSON object
    encoded as a string (ProofPile's `meta`) is decoded on the way.
    """
    if path in record:
        return record[path]
    value: object = record
    for part in path.split("."):
        if isinstance(value, str) and value.lstrip().startswith("{"):
            try:
                value = json.loads(value)
            except ValueError:
                return MISSING
        if not isinstance(value, dict) or part not in value:
            return MISSING
        value = value[part]
    return value


# --------------------------------------------------------------------------------------------
# Inputs and tasks


@dataclass(frozen=True)
class InputFile:
    """One corpus file; local files keep a plain absolute path, others a full URL."""

    url: str
    size: int
    format: str


@dataclass(frozen=True)
class Task:
    """One unit of work, which becomes one output shard."""

    url: str
    format: str
    size: int
    byte_range: tuple[int, int] | None = None
    row_groups: tuple[int, int] | None = None
    est_bytes: int | None = field(default=None, compare=False, repr=False)
    """Bytes the task reads when neither `size` nor `byte_range` says (parquet row groups)."""

    def describe(self) -> dict:
        """JSON-able identity of the task, for the manifest and resume keys."""
        out: dict[str, Any] = {"url": self.url, "format": self.format}
        if self.byte_range is not None:
            out["byte_range"] = list(self.byte_range)
        if self.row_groups is not None:
            out["row_groups"] = list(self.row_groups)
        return out

    @property
    def weight(self) -> int:
        """Approximate bytes read, so progress bars move by data rather than by task."""
        if self.byte_range is not None:
            return self.byte_range[1] - self.byte_range[0]
        if self.est_bytes is not None:
            return self.est_bytes
        return self.size


@dataclass(frozen=True)
class ReadOptions:
    """How records become documents; shipped to every worker, so it must stay small."""

    text_field: str = "text"
    txt_mode: str = "document"
    on_error: str = "fail"
    where: tuple[RowFilter, ...] = ()
    storage_options: dict = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("txt_mode", self.txt_mode, ("document", "line")),
            ("on_error", self.on_error, ("fail", "skip")),
        ):
            if value not in allowed:
                raise MixerError(f"{name} {value!r} is not one of {', '.join(allowed)}")
        if not self.text_field or any(not p for p in self.text_field.split(".")):
            raise MixerError(f"bad text field {self.text_field!r}")


@dataclass
class ReadStats:
    """Counters one `read_documents` call fills in, for the shard's manifest entry."""

    documents: int = 0
    filtered: int = 0
    skipped: collections.Counter = field(default_factory=collections.Counter)
    bytes_read: int = 0


def detect_format(url: str) -> str:
    """Format from the file name's extension."""
    name = url.rstrip("/").rsplit("/", 1)[-1].lower()
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return _EXTENSIONS[suffix]
    raise MixerError(f"unknown format for {url}; use --format with one of {', '.join(FORMATS)}")


def _known(url: str) -> bool:
    try:
        detect_format(url)
    except MixerError:
        return False
    return True


def _selected(rel: str, format: str | None) -> bool:
    """Whether a file found under a directory or by a glob is corpus, not a store or dotfile."""
    parts = rel.split("/")
    name = parts[-1]
    if any(p.startswith(".") for p in parts if p):
        return False
    if name in _STORE_NAMES or name.endswith(_STORE_SUFFIXES):
        return False
    return format is not None or _known(name)


def expand_inputs(
    inputs: list[str], format: str | None = None, storage_options: dict | None = None
) -> list[InputFile]:
    """Files, directories and globs (local or fsspec URLs) -> the corpus files, in a fixed order.

    A file named explicitly is always read. Directories (recursively) and globs take only files
    with a known extension (any file when `format` is given), skipping dotfiles and token-store
    files, so that pointing at a data folder does not pick up a README or a store.
    """
    if format is not None and format not in FORMATS:
        raise MixerError(f"--format {format!r} is not one of {', '.join(FORMATS)}")
    seen: set[str] = set()
    files: list[InputFile] = []
    for spec in inputs:
        try:
            found = _expand_one(spec, format, storage_options or {})
        except (FileNotFoundError, PermissionError) as e:
            raise MixerError(f"cannot list input {spec!r}: {e}") from None
        for url, size in sorted(found):
            if url not in seen:
                seen.add(url)
                files.append(InputFile(url, size, format or detect_format(url)))
    return files


def _expand_one(spec: str, format: str | None, storage_options: dict) -> list[tuple[str, int]]:
    fs, path = fsspec.core.url_to_fs(spec, **storage_options)
    local = isinstance(fs, LocalFileSystem)
    if local:
        path = os.path.abspath(path)

    def url_of(p: str) -> str:
        return os.path.abspath(p) if local else fs.unstrip_protocol(p)

    if any(c in path for c in "*?["):
        entries = fs.glob(path, detail=True)
        candidates: list[tuple[str, str, int]] = []
        for p, info in entries.items():
            if info["type"] == "directory":
                candidates += _walk(fs, p)
            else:
                candidates.append((p, p.rsplit("/", 1)[-1], info.get("size") or 0))
    elif fs.isdir(path):
        candidates = _walk(fs, path)
    elif fs.isfile(path):
        return [(url_of(path), fs.size(path) or 0)]
    else:
        raise MixerError(f"no input files match {spec!r}: it does not exist")
    chosen = [(url_of(p), size) for p, rel, size in candidates if _selected(rel, format)]
    if not chosen:
        unknown = [rel for _, rel, _ in candidates if _selected(rel, "any")]
        hint = ""
        if unknown:
            hint = f" (only files of unknown format, e.g. {unknown[0]!r}; use --format)"
        raise MixerError(f"no input files match {spec!r}{hint}")
    return chosen


def _walk(fs: Any, root: str) -> list[tuple[str, str, int]]:
    """(path, path relative to root, size) of every file under a directory."""
    root = root.rstrip("/")
    found = fs.find(root, detail=True)
    return [
        (p, p[len(root) :].lstrip("/"), info.get("size") or 0)
        for p, info in found.items()
        if info["type"] != "directory"
    ]


def plan_tasks(
    files: list[InputFile], chunk_bytes: int = 64 << 20, options: ReadOptions | None = None
) -> list[Task]:
    """Split files into tasks of about `chunk_bytes` each, in a fixed order.

    Uncompressed line files are split into byte ranges, parquet into runs of row groups (by
    uncompressed size, read from the footer); compressed files and whole-file text documents
    cannot be split and are one task each.
    """
    if chunk_bytes <= 0:
        raise MixerError(f"chunk size must be positive, not {chunk_bytes}")
    options = options or ReadOptions()
    if options.where:
        txt = [f.url for f in files if f.format.startswith("txt")]
        if txt:
            raise MixerError(f"--where needs records with fields; {txt[0]} is plain text")
    parquet = [f for f in files if f.format == "parquet"]
    with ThreadPoolExecutor(min(_FOOTER_THREADS, max(1, len(parquet)))) as pool:
        groups = list(pool.map(lambda f: _parquet_groups(f, options), parquet))
    footers = {f.url: g for f, g in zip(parquet, groups, strict=True)}
    tasks: list[Task] = []
    for f in files:
        splittable = f.format == "jsonl" or (f.format == "txt" and options.txt_mode == "line")
        if f.format == "parquet":
            tasks += _split_row_groups(f, footers[f.url], chunk_bytes)
        elif splittable and f.size > chunk_bytes:
            n = -(-f.size // chunk_bytes)
            bounds = [f.size * i // n for i in range(n + 1)]
            tasks += [
                Task(f.url, f.format, f.size, byte_range=(a, b))
                for a, b in zip(bounds, bounds[1:], strict=False)
            ]
        else:
            tasks.append(Task(f.url, f.format, f.size))
    return tasks


def _parquet_groups(f: InputFile, options: ReadOptions) -> list[tuple[int, int]]:
    """(uncompressed, compressed) bytes of each row group; checks the text column exists."""
    import pyarrow.parquet as pq

    with _open(f.url, options.storage_options) as raw, _arrow_errors(f.url):
        pf = pq.ParquetFile(raw)
        _check_text_column(f.url, pf, options.text_field)
        md = pf.metadata
        return [
            (
                md.row_group(i).total_byte_size,
                sum(md.row_group(i).column(c).total_compressed_size for c in range(md.num_columns)),
            )
            for i in range(md.num_row_groups)
        ]


def _split_row_groups(f: InputFile, groups: list[tuple[int, int]], chunk: int) -> list[Task]:
    runs: list[tuple[int, int]] = []
    start, total = 0, 0
    for i, (uncompressed, _) in enumerate(groups):
        total += uncompressed
        if total >= chunk:
            runs.append((start, i + 1))
            start, total = i + 1, 0
    if start < len(groups):
        runs.append((start, len(groups)))
    if len(runs) <= 1:
        return [Task(f.url, f.format, f.size, est_bytes=sum(c for _, c in groups))]
    return [
        Task(f.url, f.format, f.size, row_groups=(a, b), est_bytes=sum(c for _, c in groups[a:b]))
        for a, b in runs
    ]


# --------------------------------------------------------------------------------------------
# Reading


class _BadRecord(Exception):
    """A record that cannot become a document; `reason` is the key counted in `skipped`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def read_documents(task: Task, options: ReadOptions, stats: ReadStats) -> Iterator[str]:
    """Stream the documents of one task, updating `stats` as it goes.

    Bad records raise `InputError("file:line: why")` (parquet: `file:row N:`, N 0-based within
    the file) or, with `on_error="skip"`, are counted in `stats.skipped`. A damaged or truncated
    file is an `InputError` in both modes.
    """
    if task.format == "parquet":
        records: Iterator[tuple[Any, Any]] = _parquet_records(task, options, stats)
    elif task.format.startswith("txt") and options.txt_mode == "document":
        if task.byte_range is not None:
            raise MixerError(f"{task.url}: a byte range task needs txt_mode='line'")
        records = _txt_document(task, options, stats)
    else:
        records = _line_records(task, options, stats)
    for where, item in records:
        try:
            if isinstance(item, _BadRecord):
                raise item
            text = _document(item, options, stats)
        except _BadRecord as bad:
            if options.on_error == "skip":
                stats.skipped[bad.reason] += 1
                continue
            raise InputError(f"{task.url}:{where()}: {bad.detail}") from None
        if text is not None:
            stats.documents += 1
            yield text


def _document(item: Any, options: ReadOptions, stats: ReadStats) -> str | None:
    """The document of one record (a str for txt, a dict otherwise); None when filtered out."""
    if isinstance(item, str):
        text: object = item
        name = "line"
    else:
        if not all(f.matches(item) for f in options.where):
            stats.filtered += 1
            return None
        name = repr(options.text_field)
        text = get_field(item, options.text_field)
        if text is MISSING:
            raise _BadRecord("missing_text", f"no field {name}")
        if text is None:
            raise _BadRecord("missing_text", f"field {name} is null")
        if isinstance(text, bytes):
            text = _decode(text)
        if not isinstance(text, str):
            raise _BadRecord("non_string_text", f"field {name} is {type(text).__name__}, not text")
        if not text.isascii():
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


def _line_records(task: Task, options: ReadOptions, stats: ReadStats) -> Iterator[tuple[Any, Any]]:
    """(line number thunk, record or `_BadRecord`) for each line of a jsonl or txt-line task."""
    lines = _Lines(task, options, stats)
    is_json = task.format.startswith("jsonl")
    fast = not options.where
    for line in lines:
        if line.endswith(b"\n"):
            line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
        item: Any
        try:
            item = _parse_json(line, fast) if is_json else _decode(line)
        except _BadRecord as bad:
            item = bad
        if item is None:
            continue  # blank lines (typically at the end of a file) are not records
        yield lines.lineno, item


def _parse_json(line: bytes, fast: bool = True) -> dict | None:
    """The JSON object on one line; None for a blank line.

    With `fast`, orjson parses the bytes (about 2x faster than `json`) and whatever it refuses
    (invalid UTF-8, lone surrogate escapes, NaN, huge numbers, blank lines) is parsed again by
    `json`, so the lines accepted, their strings and the error messages are the standard
    library's. One difference remains: integers beyond 64 bits become floats. A --where filter
    could see that, so filtered reads pass fast=False.
    """
    record: Any = _BLANK
    if fast:
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            record = _parse_json_stdlib(line)
    else:
        record = _parse_json_stdlib(line)
    if record is _BLANK:
        return None
    if not isinstance(record, dict):
        raise _BadRecord("malformed_json", f"expected a JSON object, got {type(record).__name__}")
    return record


_BLANK = object()


def _parse_json_stdlib(line: bytes) -> Any:
    text = _decode(line)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        if not text.strip():
            return _BLANK
        raise _BadRecord("malformed_json", f"malformed JSON: {e.msg} at column {e.colno}") from None
    except RecursionError:
        raise _BadRecord("malformed_json", "malformed JSON: nested too deeply") from None


class _Lines:
    """Raw lines of a line task; knows each line's 1-based number, computed lazily for ranges."""

    def __init__(self, task: Task, options: ReadOptions, stats: ReadStats) -> None:
        self.task, self.options, self.stats = task, options, stats
        self.count = 0  # lines read so far in this task
        self.first = 0  # byte offset of the task's first line (uncompressed formats)
        self._before: int | None = None

    def __iter__(self) -> Iterator[bytes]:
        task, stats = self.task, self.stats
        start, stop = task.byte_range or (0, None)
        with _open(task.url, self.options.storage_options) as raw:
            if task.format.endswith((".gz", ".zst")):
                stream = _decompressed(raw, task, stats)
                readline = _decompress_errors(stream.readline, task.url)
                while line := readline():
                    self.count += 1
                    yield line
                return
            if start > 0:
                raw.seek(start - 1)
            stream = io.BufferedReader(_Raw(raw, None), _IO_CHUNK)
            pos = start
            if start > 0:
                pos += len(stream.readline()) - 1  # the rest of a line owned by the range before
            self.first = pos
            while stop is None or pos < stop:
                line = stream.readline()
                if not line:
                    break
                pos += len(line)
                stats.bytes_read += len(line)
                self.count += 1
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
    with _open(url, options.storage_options) as raw:
        while end > 0:
            data = raw.read(min(_IO_CHUNK, end))
            if not data:
                break
            count += data.count(b"\n")
            end -= len(data)
    return count


def _txt_document(task: Task, options: ReadOptions, stats: ReadStats) -> Iterator[tuple[Any, Any]]:
    """A whole text file is one document (it has to fit in memory as a string anyway)."""
    with _open(task.url, options.storage_options) as raw:
        if task.format == "txt":
            data = raw.read()
            stats.bytes_read += len(data)
        else:
            stream = _decompressed(raw, task, stats)
            data = _decompress_errors(stream.read, task.url)()
    try:
        item: Any = data.decode("utf-8")
        line = 1
    except UnicodeDecodeError as e:
        item = _BadRecord("invalid_utf8", f"invalid UTF-8 at byte {e.start}")
        line = data.count(b"\n", 0, e.start) + 1
    del data
    yield (lambda: line), item


def _parquet_records(
    task: Task, options: ReadOptions, stats: ReadStats
) -> Iterator[tuple[Any, Any]]:
    """(row thunk, record) for each row, reading only the columns the options need."""
    import pyarrow.parquet as pq

    with _open(task.url, options.storage_options) as raw:
        with _arrow_errors(task.url):
            pf = pq.ParquetFile(raw)
            names = pf.schema_arrow.names
            _check_text_column(task.url, pf, options.text_field)
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
                with _arrow_errors(task.url):
                    batch = next(batches, None)
                    rows = batch.to_pylist() if batch is not None else None
                if rows is None:
                    break
                for record in rows:
                    n = row
                    yield (lambda n=n: f"row {n}"), record
                    row += 1
            rg = md.row_group(group)
            stats.bytes_read += sum(
                rg.column(c).total_compressed_size for c in range(md.num_columns)
            )


def _check_text_column(url: str, pf: pq.ParquetFile, text_field: str) -> None:
    names = pf.schema_arrow.names
    column = text_field if text_field in names else text_field.split(".")[0]
    if column not in names:
        raise InputError(
            f"{url}: no column {column!r} for text field {text_field!r}; "
            f"columns are {', '.join(names)}"
        )


@contextlib.contextmanager
def _arrow_errors(url: str) -> Iterator[None]:
    import pyarrow as pa

    try:
        yield
    except (pa.ArrowException, OSError, UnicodeDecodeError) as e:  # corrupt pages surface
        reason = " ".join(str(e).split())  # as bare OSError or bad UTF-8 in a string column
        raise InputError(f"{url}: cannot read parquet: {reason}") from None


@contextlib.contextmanager
def _open(url: str, storage_options: dict) -> Iterator[BinaryIO]:
    fs, path = fsspec.core.url_to_fs(url, **storage_options)
    try:
        f = fs.open(path, "rb")
    except FileNotFoundError:
        raise InputError(f"{url}: file not found") from None
    with f:
        yield f


class _Raw(io.RawIOBase):
    """Adapts any fsspec file to `io.BufferedReader` (fast readline), counting bytes if asked."""

    def __init__(self, f: BinaryIO, stats: ReadStats | None) -> None:
        self._f, self._stats = f, stats

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self._f.read(len(b))
        n = len(data)
        b[:n] = data
        if self._stats is not None:
            self._stats.bytes_read += n
        return n


def _decompressed(raw: BinaryIO, task: Task, stats: ReadStats) -> BinaryIO:
    """A buffered stream of decompressed bytes; compressed bytes consumed go to `stats`."""
    counted = _Raw(raw, stats)
    if task.format.endswith(".gz"):
        return gzip.GzipFile(fileobj=io.BufferedReader(counted, _IO_CHUNK), mode="rb")
    return io.BufferedReader(_Zstd(counted, task.url), _IO_CHUNK)


def _decompress_errors(read: Any, url: str) -> Any:
    """Wrap a read function so that damaged gzip data names the file."""

    def wrapped(*args: Any) -> bytes:
        try:
            return read(*args)
        except (EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise InputError(f"{url}: corrupt or truncated gzip data ({e})") from None

    return wrapped


class _Zstd(io.RawIOBase):
    """Decompresses concatenated zstd frames, and raises when the last frame is cut short.

    `zstandard`'s stream_reader returns a truncated frame's prefix without complaint, so this
    feeds one decompressobj per frame and checks at the end of the input that none is open.
    """

    def __init__(self, raw: io.RawIOBase, url: str) -> None:
        self._raw, self._url = raw, url
        self._dctx = zstandard.ZstdDecompressor(max_window_size=1 << 31)
        self._obj = self._dctx.decompressobj()
        self._open_frame = False
        self._out = memoryview(b"")
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._out:
            if self._done:
                return 0
            self._fill()
        n = min(len(b), len(self._out))
        b[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def _fill(self) -> None:
        data = self._raw.read(_ZSTD_FEED)
        if not data:
            self._done = True
            if self._open_frame:
                raise InputError(f"{self._url}: truncated zstd data (the last frame is incomplete)")
            return
        out = []
        while data:
            try:
                out.append(self._obj.decompress(data))
            except zstandard.ZstdError as e:
                raise InputError(f"{self._url}: corrupt zstd data ({e})") from None
            self._open_frame = True
            data = b""
            if self._obj.eof:
                data = self._obj.unused_data
                self._obj = self._dctx.decompressobj()
                self._open_frame = False
        self._out = memoryview(b"".join(out))
