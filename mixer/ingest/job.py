"""What `mixer tokenize` is asked to do: a `TokenizeJob`, one for the CLI, recipes and the API.

`TokenizeJob` validates every field when it is built, so the CLI, the pipeline and the library
share one set of checks and messages. A bad field raises `JobError`, whose message starts with
the field's name (`on_error: 'x' is not one of fail, skip`); the CLI shows the flag instead
(`--on-error`), a pipeline the TOML key (which is the field name).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any

from mixer.errors import JobError, MixerError
from mixer.ingest.files import FORMATS
from mixer.ingest.readers import MAX_DOCUMENT_BYTES
from mixer.ingest.where import RowFilter, parse_where

BACKENDS = ("auto", "hf", "fast", "giga")


ON_ERROR = ("fail", "skip")


TXT_MODES = ("document", "line")


def check_text_field(value: Any) -> str:
    """A field name or dotted path (meta.body): non-empty parts, no empty segment."""
    if not isinstance(value, str) or not value or any(not p for p in value.split(".")):
        raise JobError("text_field", f"{value!r} is not a field name or a dotted path like a.b")
    return value


@dataclass(frozen=True)
class TokenizeJob:
    """Everything `mixer tokenize` was asked to do; the CLI and the API both build one.

    Sequences may be given as lists; they are stored as tuples.
    """

    inputs: tuple[str, ...]
    """Files, directories or globs; local paths or fsspec URLs."""
    tokenizer: str
    """A HF tokenizer.json, or a directory holding one (local or URL)."""
    out: str
    """The store to create: a directory, or an fsspec URL such as s3://bucket/prefix."""
    format: str | None = None
    """One of `mixer.ingest.files.FORMATS`; None detects it from each file's extension."""
    text_field: str = "text"
    """The record field holding the text; a dotted path reaches into nested objects."""
    txt_mode: str = "document"
    """For plain text: 'document' (a file is one document) or 'line' (one per line)."""
    on_error: str = "fail"
    """Bad records: 'fail' stops at file:line, 'skip' counts them in the manifest."""
    where: tuple[str, ...] = ()
    """Row filters (`mixer.ingest.where`), all of which a record must pass."""
    eos_token: str | None = None
    """Token appended after every document; None picks the tokenizer's usual EOS."""
    no_eos: bool = False
    """Append no EOS token at all."""
    workers: int | None = None
    """Parallel Ray tasks; None decides by input size, 0 runs in this process."""
    ray_address: str | None = None
    """Join this Ray cluster ('auto' or HOST:PORT) instead of starting a local one."""
    chunk_bytes: int = 32 << 20
    """Uncompressed line files larger than this are split into tasks of about this size."""
    backend: str = "auto"
    """'hf', 'fast', or 'auto': the fast engine once it matched hf id for id on this input."""
    storage_options: dict = field(default_factory=dict, hash=False)
    """Passed to fsspec for inputs and a URL `out`."""
    cache_dir: str | None = None
    """Staging for a URL `out` (default: `mixer.store.cache.default_cache_dir`)."""
    include: tuple[str, ...] = ()
    """Globs relative to each input root selecting the files to read (`mixer.ingest.select`)."""
    exclude: tuple[str, ...] = ()
    """Globs relative to each input root of files to skip."""
    all_splits: bool = False
    """Also read val/validation/dev/test/sample folders."""
    limit: int | None = None
    """A trial: only the first `limit` documents, in input order (files in the order found,
    records in file order), in this process. The manifest records it (`job.limit`), so a trial
    is never taken for a complete store: a job without it (or with another) replaces the trial
    in the same output, and a trial refuses an output that holds a complete store."""
    max_document_bytes: int = MAX_DOCUMENT_BYTES
    """Longest record read (a jsonl line, a txt document or line, a parquet text value):
    longer ones are an error naming file:line, or counted as `too_large` with on_error="skip".
    Bounds memory for any input (see `mixer.ingest.readers.MAX_DOCUMENT_BYTES`)."""

    def __post_init__(self) -> None:
        for name in ("inputs", "where", "include", "exclude"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, (list, tuple)):
                raise JobError(name, f"must be a list of strings, got {value!r}")
            if not all(isinstance(v, str) for v in value):
                raise JobError(name, f"must be a list of strings, got {list(value)!r}")
            object.__setattr__(self, name, tuple(value))
        if not self.inputs:
            raise JobError("inputs", "name at least one file, directory or glob")
        for name in ("tokenizer", "out"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                value = os.fspath(value)
                object.__setattr__(self, name, value)
            if not isinstance(value, str) or not value:
                raise JobError(name, f"must be a non-empty path or URL, got {value!r}")
        for name, allowed in (
            ("format", (None, *FORMATS)),
            ("txt_mode", TXT_MODES),
            ("on_error", ON_ERROR),
            ("backend", BACKENDS),
        ):
            if getattr(self, name) not in allowed:
                shown = ", ".join(a for a in allowed if a is not None)
                raise JobError(name, f"{getattr(self, name)!r} is not one of {shown}")
        check_text_field(self.text_field)
        for name in ("eos_token", "ray_address", "cache_dir"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise JobError(name, f"must be a non-empty string, got {value!r}")
        for name in ("no_eos", "all_splits"):
            if not isinstance(getattr(self, name), bool):
                raise JobError(name, f"must be true or false, got {getattr(self, name)!r}")
        if self.no_eos and self.eos_token is not None:
            raise JobError(
                "eos_token", "cannot be given together with no_eos=True", params=("no_eos",)
            )
        if self.workers is not None and (not _is_int(self.workers) or self.workers < 0):
            raise JobError("workers", f"must be a whole number >= 0, got {self.workers!r}")
        if self.limit is not None and (not _is_int(self.limit) or self.limit < 1):
            raise JobError("limit", f"must be a whole number of documents >= 1, got {self.limit!r}")
        if not _is_int(self.max_document_bytes) or self.max_document_bytes < 1:
            raise JobError(
                "max_document_bytes",
                f"must be a positive number of bytes, got {self.max_document_bytes!r}",
            )
        if not _is_int(self.chunk_bytes) or self.chunk_bytes <= 0:
            raise JobError("chunk_bytes", f"must be a positive number, got {self.chunk_bytes!r}")
        if not isinstance(self.storage_options, dict):
            raise JobError("storage_options", f"must be a mapping, got {self.storage_options!r}")
        try:
            self.row_filters()
        except MixerError as e:
            raise JobError("where", str(e)) from None

    def row_filters(self) -> tuple[RowFilter, ...]:
        """The parsed `where` filters."""
        return tuple(parse_where(w) for w in self.where)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Every field, in order: the keys a pipeline's store table may set."""
        return tuple(f.name for f in fields(cls))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
