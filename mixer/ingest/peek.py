"""`mixer peek`: look at the first records of an input before writing a where filter or text field.

It reads the first records of a few files spread over the input (the same files, in the same
order, that `mixer tokenize` would read with the same include/exclude patterns and split rule)
and reports the columns or JSON keys it saw with how often each is present, the first texts
(cut), and for a chosen field its most common values with counts. Nothing is tokenized.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from mixer.errors import MixerError
from mixer.ingest import inputs, readers
from mixer.ingest.files import arrow_errors, open_input
from mixer.ingest.job import check_text_field
from mixer.ingest.matches import value_label
from mixer.ingest.select import Selection
from mixer.ingest.where import MISSING, get_field

TEXT_CUT = 160


@dataclass
class PeekReport:
    """What `peek` saw; `format_peek` prints it, `to_json` serializes it."""

    files: int  # files the input selects
    read_from: list[str]  # files records were read from
    records: int
    schema: dict[str, str] = field(default_factory=dict)  # parquet: column -> arrow type
    keys: Counter = field(default_factory=Counter)  # key (nested one level, dotted) -> records
    types: dict[str, str] = field(default_factory=dict)  # key -> type names seen
    texts: list[tuple[str, str]] = field(default_factory=list)  # (where, cut text)
    text_field: str = "text"
    text_present: int = 0
    field_name: str | None = None
    field_present: int = 0
    values: Counter = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "read_from": self.read_from,
            "records": self.records,
            "schema": self.schema,
            "keys": dict(self.keys.most_common()),
            "types": self.types,
            "texts": [{"where": w, "text": t} for w, t in self.texts],
            "text_field": self.text_field,
            "text_present": self.text_present,
            "field": self.field_name,
            "field_present": self.field_present,
            "values": dict(self.values.most_common()),
        }


def peek(
    specs: list[str],
    field: str | None = None,
    limit: int = 1000,
    texts: int = 3,
    max_files: int = 8,
    text_field: str = "text",
    format: str | None = None,
    selection: Selection | None = None,
    storage_options: dict | None = None,
) -> PeekReport:
    """Read up to `limit` records, the first ones of up to `max_files` files spread evenly over
    the input's files, and summarize them (see the module docstring)."""
    if limit < 1 or max_files < 1:
        raise MixerError(
            f"limit={limit} and max_files={max_files}: both must be at least 1",
            params=("limit", "max_files"),
        )
    check_text_field(text_field)
    storage_options = storage_options or {}
    files = inputs.expand_inputs(specs, format, storage_options, selection)
    if field is not None and all(f.format.startswith("txt") for f in files):
        raise MixerError(f"field={field!r}: plain text files have no fields", params=("field",))
    step = len(files) / min(max_files, len(files))
    picked = [files[int(i * step)] for i in range(min(max_files, len(files)))]
    per_file = -(-limit // len(picked))
    report = PeekReport(len(files), [], 0, text_field=text_field, field_name=field)
    options = readers.ReadOptions(
        text_field=text_field, on_error="skip", storage_options=storage_options
    )
    for f in picked:
        if report.records >= limit:
            break
        take = min(per_file, limit - report.records)
        report.read_from.append(f.url)
        for where, record in _first_records(f, options, take, report):
            report.records += 1
            _observe(report, where, record, texts)
    return report


def _first_records(f: inputs.InputFile, options: readers.ReadOptions, n: int, report: PeekReport):
    """(location, record) of the first `n` records of one file; a str for plain text."""
    if f.format == "parquet":
        import pyarrow.parquet as pq

        with open_input(f.url, options.storage_options) as raw, arrow_errors(f.url):
            pf = pq.ParquetFile(raw)
            if not report.schema:
                report.schema = {
                    name: str(t)
                    for name, t in zip(pf.schema_arrow.names, pf.schema_arrow.types, strict=True)
                }
            row = 0
            for batch in pf.iter_batches(batch_size=min(n, 1024)):
                for record in batch.to_pylist():
                    yield f"{f.url} row {row}", record
                    row += 1
                    if row >= n:
                        return
        return
    task = inputs.Task(f.url, f.format, f.size)
    if f.format.startswith("txt") and options.txt_mode == "document":
        for _, item in readers.read_records(task, options):
            if isinstance(item, str):
                yield f.url, item
        return
    count = 0
    for line, item in readers.read_records(task, options):
        if isinstance(item, (dict, str)):
            yield f"{f.url}:{line()}", item
            count += 1
            if count >= n:
                return


def _observe(report: PeekReport, where: str, record: Any, texts: int) -> None:
    if isinstance(record, str):
        text: object = record
    else:
        for key, value in record.items():
            report.keys[key] += 1
            _note_type(report, key, value)
            nested = value
            if isinstance(value, str) and value.lstrip().startswith("{"):
                try:
                    nested = json.loads(value)
                except ValueError:
                    nested = None
            if isinstance(nested, dict):
                for sub, subvalue in nested.items():
                    report.keys[f"{key}.{sub}"] += 1
                    _note_type(report, f"{key}.{sub}", subvalue)
        text = get_field(record, report.text_field)
        if report.field_name is not None:
            value = get_field(record, report.field_name)
            if value is not MISSING:
                report.field_present += 1
                report.values[value_label(value, 60)] += 1
    if isinstance(text, str):
        report.text_present += 1
        if len(report.texts) < texts:
            cut = text if len(text) <= TEXT_CUT else text[:TEXT_CUT] + "…"
            report.texts.append((where, cut))


def _note_type(report: PeekReport, key: str, value: Any) -> None:
    name = type(value).__name__
    if isinstance(value, str) and value.lstrip().startswith("{"):
        name = "str (JSON object)"
    seen = report.types.get(key)
    if seen is None:
        report.types[key] = name
    elif name not in seen.split(" | "):
        report.types[key] = f"{seen} | {name}"


def format_peek(report: PeekReport, top: int = 20) -> str:
    """The report as the lines `mixer peek` prints."""
    lines = [
        f"read {report.records:,} records from {len(report.read_from)} of {report.files:,} "
        f"file{'s' if report.files != 1 else ''} (the first of each, spread over the input)"
    ]
    if report.schema:
        lines.append("columns  " + ", ".join(f"{k}: {v}" for k, v in report.schema.items()))
    if report.keys:
        lines.append("keys (records holding each, type):")
        for key, count in sorted(report.keys.items(), key=lambda kv: (kv[0].count("."), kv[0])):
            lines.append(f"  {key:<32} {count:>8,}  {report.types.get(key, '')}")
    lines.append(
        f"text field {report.text_field!r}: a string in {report.text_present:,} of "
        f"{report.records:,} records"
    )
    for where, text in report.texts:
        lines.append(f"  {where}: {json.dumps(text, ensure_ascii=False)}")
    if report.field_name is not None:
        distinct = len(report.values)
        lines.append(
            f"field {report.field_name!r}: present in {report.field_present:,} of "
            f"{report.records:,} records, {distinct:,} distinct value{'s' if distinct != 1 else ''}"
            + (f" (the {top} most common):" if distinct > top else ":")
        )
        for label, count in report.values.most_common(top):
            lines.append(f"  {count:>8,}  {label}")
    return "\n".join(lines)
