"""Tests for mixer.ingest: inputs, task planning, streaming reads and their errors."""

from __future__ import annotations

import gzip
import json
import os
import uuid
from collections import Counter
from pathlib import Path

import fsspec
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mixer.errors import InputError, MixerError
from mixer.ingest import files, readers
from mixer.ingest.files import FORMATS, detect_format
from mixer.ingest.inputs import InputFile, Task, expand_inputs, plan_tasks
from mixer.ingest.readers import ReadOptions, ReadStats, read_documents
from mixer.ingest.where import MISSING, RowFilter, get_field, parse_where

DOCS = [
    "The quick brown fox.",
    "multi\nline\r\ndocument with CRLF",
    "Ünïcödé 🎉 漢字 e\u0301",
    "   ",  # whitespace only is a document
    "x" * 3000,
    '{"looks": "like json"}',
]
LINE_DOCS = [d for d in DOCS if "\n" not in d and "\r" not in d]


# --------------------------------------------------------------------------------------------
# helpers


def zstd_frames(payload: bytes, frames: int = 3) -> bytes:
    """Several concatenated zstd frames, cut at arbitrary (mid-line) points like real dumps."""
    c = zstandard.ZstdCompressor()
    cuts = [len(payload) * i // frames for i in range(frames + 1)]
    return b"".join(c.compress(payload[a:b]) for a, b in zip(cuts, cuts[1:], strict=False))


def compress(fmt: str, payload: bytes) -> bytes:
    if fmt.endswith(".gz"):
        return gzip.compress(payload)
    if fmt.endswith(".zst"):
        return zstd_frames(payload)
    return payload


def jsonl(records: list[dict]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def parquet_bytes(table: pa.Table, row_group_size: int | None = None) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=row_group_size)
    return sink.getvalue().to_pybytes()


def corpus_file(fmt: str, docs: list[str], txt_mode: str = "document") -> bytes:
    if fmt == "parquet":
        return parquet_bytes(pa.table({"text": docs, "n": list(range(len(docs)))}), 2)
    if fmt.startswith("jsonl"):
        payload = jsonl([{"text": d} for d in docs])
    elif txt_mode == "line":
        payload = "".join(d + "\n" for d in docs).encode()
    else:
        (doc,) = docs
        payload = doc.encode()
    return compress(fmt, payload)


def read_all(
    files: list[InputFile], chunk_bytes: int = 64 << 20, **options
) -> tuple[list[str], ReadStats, list[Task]]:
    opts = ReadOptions(**options)
    tasks = plan_tasks(files, chunk_bytes, opts)
    stats = ReadStats()
    docs = [doc for task in tasks for doc in read_documents(task, opts, stats)]
    return docs, stats, tasks


def read_file(path: Path | str, chunk_bytes: int = 64 << 20, **options) -> list[str]:
    return read_all(expand_inputs([str(path)]), chunk_bytes, **options)[0]


def one_task(path: Path, fmt: str | None = None) -> Task:
    return Task(str(path), fmt or detect_format(str(path)), os.path.getsize(path))


@pytest.fixture
def mem():
    """A private folder on fsspec's process-wide memory filesystem, removed afterwards."""
    fs = fsspec.filesystem("memory")
    root = f"/test-sources-{uuid.uuid4().hex}"
    yield fs, root
    if fs.exists(root):
        fs.rm(root, recursive=True)


# --------------------------------------------------------------------------------------------
# every format, local and memory://

EXT = {
    "jsonl": "jsonl",
    "jsonl.gz": "jsonl.gz",
    "jsonl.zst": "jsonl.zst",
    "parquet": "parquet",
    "txt": "txt",
    "txt.gz": "txt.gz",
    "txt.zst": "txt.zst",
}


@pytest.mark.parametrize("where", ["local", "memory"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_round_trips(fmt, where, tmp_path, mem):
    line_mode = fmt.startswith("txt")
    docs = LINE_DOCS if line_mode else DOCS
    data = corpus_file(fmt, docs, "line" if line_mode else "document")
    name = f"corpus.{EXT[fmt]}"
    if where == "local":
        (tmp_path / name).write_bytes(data)
        url = str(tmp_path / name)
    else:
        fs, root = mem
        fs.pipe(f"{root}/{name}", data)
        url = f"memory://{root}/{name}"
    files = expand_inputs([url])
    assert [(f.format, f.size) for f in files] == [(fmt, len(data))]
    if where == "local":
        assert files[0].url == url
    else:
        assert files[0].url.startswith("memory://") and files[0].url.endswith(name)
    got, stats, _ = read_all(files, 64, txt_mode="line" if line_mode else "document")
    assert got == docs
    assert stats.documents == len(docs) and not stats.skipped and stats.filtered == 0
    if fmt != "parquet":
        assert stats.bytes_read == len(data)
    else:
        assert 0 < stats.bytes_read < len(data)


@pytest.mark.parametrize("fmt", ["txt", "txt.gz", "txt.zst"])
def test_txt_document_mode_is_one_document_per_file(fmt, tmp_path):
    doc = "line one\r\nline two\n\n  trailing\n"
    path = tmp_path / f"a.{fmt}"
    path.write_bytes(compress(fmt, doc.encode()))
    docs, stats, tasks = read_all(expand_inputs([str(path)]), 4)
    assert (
        docs == [doc]
        and len(tasks) == 1
        and tasks[0].describe().keys() == {"url", "format", "size", "version"}
    )


def test_reads_stream_instead_of_loading_the_file(tmp_path):
    records = [{"text": f"{i} " + os.urandom(100).hex()} for i in range(30000)]  # ~6 MB
    for fmt in ("jsonl", "jsonl.gz", "jsonl.zst"):
        path = tmp_path / f"big.{fmt}"
        path.write_bytes(compress(fmt, jsonl(records)))
        stats = ReadStats()
        it = read_documents(one_task(path), ReadOptions(), stats)
        assert next(it).startswith("0 ")
        assert stats.bytes_read < path.stat().st_size / 2, fmt
        it.close()


# --------------------------------------------------------------------------------------------
# byte ranges


def check_exactly_once(path: Path, lines: list[str], txt: bool) -> None:
    size = path.stat().st_size
    fmt = "txt" if txt else "jsonl"
    files = [InputFile(str(path), size, fmt)]
    for chunk in range(1, size + 2):
        opts = ReadOptions(txt_mode="line") if txt else ReadOptions()
        tasks = plan_tasks(files, chunk, opts)
        if chunk < size:
            assert len(tasks) > 1
        ranges = [t.byte_range for t in tasks]
        if ranges[0] is not None:
            assert ranges[0][0] == 0 and ranges[-1][1] == size
            pairs = zip(ranges, ranges[1:], strict=False)
            assert all(a[1] == b[0] and a[0] < a[1] for a, b in pairs)
        stats = ReadStats()
        got = [d for t in tasks for d in read_documents(t, opts, stats)]
        assert got == lines, chunk
        assert stats.bytes_read == size
        assert sum(t.weight for t in tasks) == size


def test_byte_ranges_read_every_line_once_for_every_chunk_size(tmp_path):
    # Every offset is a range start at chunk size 1, so ranges begin mid-line, exactly at a "\n",
    # at the "\r" and at the "\n" of a CRLF, at a blank line and at the start of the last line.
    payload = (
        b'{"text": "a"}\n'
        b'{"text": "bb"}\r\n'
        b"\n"
        b'{"text": "' + "ü".encode() * 20 + b'"}\r\n'
        b"   \n"
        b'{"text": "c"}\n'
        b'{"text": "last, no newline"}'
    )
    path = tmp_path / "a.jsonl"
    path.write_bytes(payload)
    check_exactly_once(path, ["a", "bb", "ü" * 20, "c", "last, no newline"], txt=False)


def test_txt_line_mode_byte_ranges(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"one\r\ntwo\nthree \n\xc3\xbc\xc3\xbc\nfour")
    check_exactly_once(path, ["one", "two", "three ", "üü", "four"], txt=True)


line_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"), max_size=12
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    lines=st.lists(st.tuples(line_text, st.sampled_from(["\n", "\r\n"])), max_size=12),
    last_newline=st.booleans(),
    txt=st.booleans(),
    chunk=st.integers(1, 64),
)
def test_byte_ranges_property(tmp_path, lines, last_newline, txt, chunk):
    if txt:
        docs = [t for t, _ in lines if t]
        rows = [(t, end) for t, end in lines if t]
        payload = "".join(t + end for t, end in rows)
    else:
        docs = [t for t, _ in lines]
        payload = "".join(json.dumps({"text": t or " "}) + end for t, end in lines)
        docs = [t or " " for t in docs]
    if not last_newline and payload:
        payload = payload.rstrip("\r\n")
    path = tmp_path / f"p-{uuid.uuid4().hex}.{'txt' if txt else 'jsonl'}"
    path.write_bytes(payload.encode())
    got, stats, tasks = read_all(expand_inputs([str(path)]), chunk, txt_mode="line")
    assert got == docs
    assert stats.bytes_read == len(payload.encode())
    path.unlink()


def test_error_line_numbers_are_file_lines_in_every_range(tmp_path):
    lines = [json.dumps({"text": f"doc {i}"}) for i in range(200)]
    lines[150] = '{"text": broken'
    path = tmp_path / "a.jsonl"
    path.write_text("\n".join(lines) + "\n")
    tasks = plan_tasks(expand_inputs([str(path)]), 100)
    assert len(tasks) > 20
    errors = []
    for task in tasks:
        try:
            list(read_documents(task, ReadOptions(), ReadStats()))
        except InputError as e:
            errors.append(str(e))
    assert len(errors) == 1 and errors[0].startswith(f"{path}:151: malformed JSON")


def test_single_5mb_line_document(tmp_path):
    big = "z" * (5 << 20)
    path = tmp_path / "big.jsonl"
    path.write_bytes(jsonl([{"text": "a"}, {"text": big}, {"text": "b"}]))
    docs, stats, tasks = read_all(expand_inputs([str(path)]), 1 << 20)
    assert len(tasks) == 6
    assert [len(d) for d in docs] == [1, len(big), 1] and docs[1] == big


def test_zero_byte_text_files_give_one_empty_task(tmp_path):
    for fmt in ("jsonl", "txt"):
        path = tmp_path / f"empty.{fmt}"
        path.write_bytes(b"")
    files = expand_inputs([str(tmp_path)])
    docs, stats, tasks = read_all(files, 1, txt_mode="line")
    assert len(tasks) == 2 and docs == [] and stats.documents == 0


@pytest.mark.parametrize("fmt", ["jsonl.gz", "jsonl.zst", "txt.gz", "txt.zst"])
@pytest.mark.parametrize("on_error", ["fail", "skip"])
def test_zero_byte_compressed_files_are_truncated_not_empty(tmp_path, fmt, on_error):
    """gzip and zstd call a 0-byte file truncated: a download that never arrived must not
    become 0 documents and exit 0."""
    path = tmp_path / f"empty.{fmt}"
    path.write_bytes(b"")
    with pytest.raises(InputError, match=f"empty.{fmt}: 0 bytes, a truncated"):
        read_all(expand_inputs([str(path)]), on_error=on_error)


def test_blank_lines_in_jsonl_are_ignored(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'\n{"text": "a"}\r\n  \t\n{"text": "b"}\n\n\r\n')
    docs, stats, _ = read_all(expand_inputs([str(path)]), on_error="skip")
    assert docs == ["a", "b"] and not stats.skipped


# --------------------------------------------------------------------------------------------
# parquet


def test_parquet_splits_by_row_groups(tmp_path):
    docs = [f"doc {i} " + "p" * 90 for i in range(100)]
    path = tmp_path / "a.parquet"
    path.write_bytes(parquet_bytes(pa.table({"text": docs}), row_group_size=10))
    files = expand_inputs([str(path)])
    groups = pq.ParquetFile(path).metadata.row_group(0).total_byte_size
    docs_read, stats, tasks = read_all(files, groups * 3)
    assert docs_read == docs
    assert [t.row_groups for t in tasks] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert tasks[0].describe() == {
        "url": str(path),
        "format": "parquet",
        "size": path.stat().st_size,
        "version": str(path.stat().st_mtime_ns),
        "row_groups": [0, 3],
    }
    assert sum(t.weight for t in tasks) == stats.bytes_read
    whole = plan_tasks(files, 1 << 30)
    assert len(whole) == 1 and whole[0].row_groups is None
    assert "row_groups" not in whole[0].describe()


def test_parquet_error_rows_are_counted_in_the_file(tmp_path):
    texts = [f"t{i}" for i in range(30)]
    texts[25] = None
    path = tmp_path / "a.parquet"
    path.write_bytes(parquet_bytes(pa.table({"text": texts}), row_group_size=10))
    tasks = plan_tasks(expand_inputs([str(path)]), 1)
    assert [t.row_groups for t in tasks] == [(0, 1), (1, 2), (2, 3)]
    assert list(read_documents(tasks[0], ReadOptions(), ReadStats())) == texts[:10]
    with pytest.raises(InputError, match=rf"^{path}:row 25: field 'text' is null"):
        list(read_documents(tasks[2], ReadOptions(), ReadStats()))
    stats = ReadStats()
    assert len(list(read_documents(tasks[2], ReadOptions(on_error="skip"), stats))) == 9
    assert stats.skipped == Counter(missing_text=1)


def test_parquet_without_row_groups(tmp_path):
    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), path)
    docs, stats, tasks = read_all(expand_inputs([str(path)]), 1)
    assert len(tasks) == 1 and docs == []


def test_parquet_missing_text_column_names_file_and_column(tmp_path):
    path = tmp_path / "a.parquet"
    path.write_bytes(parquet_bytes(pa.table({"content": ["x"]})))
    files = expand_inputs([str(path)])
    with pytest.raises(InputError, match=r"a\.parquet: no column 'text'.*content"):
        plan_tasks(files)
    with pytest.raises(InputError, match=r"a\.parquet: no column 'body'"):
        list(read_documents(one_task(path), ReadOptions(text_field="body"), ReadStats()))


def test_parquet_nested_fields_types_and_where(tmp_path):
    table = pa.table(
        {
            "meta": [
                {"body": "one", "lang": "en"},
                {"body": "two", "lang": "de"},
                {"body": "three", "lang": "en"},
            ],
            "score": [0.9, 0.8, 0.1],
            "n": [1, 2, 3],
            "big": ["ignored " * 10] * 3,
        }
    )
    path = tmp_path / "a.parquet"
    path.write_bytes(parquet_bytes(table))
    opts = dict(text_field="meta.body", where=(parse_where("meta.lang == 'en'"),))
    docs, stats, _ = read_all(expand_inputs([str(path)]), **opts)
    assert docs == ["one", "three"] and stats.filtered == 1
    docs, stats, _ = read_all(
        expand_inputs([str(path)]), where=(parse_where("score > 0.5"),), text_field="meta.body"
    )
    assert docs == ["one", "two"]
    with pytest.raises(InputError, match=rf"{path}:row 0: field 'n' is int, not text"):
        read_all(expand_inputs([str(path)]), text_field="n")


def test_corrupt_parquet_is_an_input_error(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"PAR1 this is not parquet at all")
    with pytest.raises(InputError, match="bad.parquet"):
        plan_tasks(expand_inputs([str(path)]))


# --------------------------------------------------------------------------------------------
# damaged compressed files


def damaged(kind: str) -> bytes:
    payload = jsonl([{"text": f"document number {i} " * 5} for i in range(300)])
    if kind == "zstd-truncated":
        return zstd_frames(payload)[:-5]
    if kind == "zstd-truncated-mid":
        data = zstd_frames(payload, frames=1)
        return data[: len(data) // 2]
    if kind == "zstd-garbage":
        return b"this is not zstd at all, just text\n" * 10
    if kind == "zstd-corrupt":
        data = bytearray(zstd_frames(payload))
        data[len(data) // 2 : len(data) // 2 + 16] = b"\xff" * 16
        return bytes(data)
    if kind == "gzip-truncated":
        return gzip.compress(payload)[:-20]
    if kind == "gzip-bad-crc":
        data = bytearray(gzip.compress(payload))
        data[-6] ^= 0xFF
        return bytes(data)
    if kind == "gzip-corrupt":
        data = bytearray(gzip.compress(payload))
        data[len(data) // 2 : len(data) // 2 + 16] = b"\x00" * 16
        return bytes(data)
    assert kind == "gzip-garbage"
    return b"plain text, not gzip\n" * 10


@pytest.mark.parametrize("on_error", ["fail", "skip"])
@pytest.mark.parametrize(
    "kind",
    [
        "zstd-truncated",
        "zstd-truncated-mid",
        "zstd-garbage",
        "zstd-corrupt",
        "gzip-truncated",
        "gzip-bad-crc",
        "gzip-corrupt",
        "gzip-garbage",
    ],
)
def test_damaged_compressed_files_fail_in_both_modes(kind, on_error, tmp_path):
    fmt = "jsonl.zst" if kind.startswith("zstd") else "jsonl.gz"
    path = tmp_path / f"bad.{fmt}"
    path.write_bytes(damaged(kind))
    # gzip checks its CRC only at the end, so damage can first show up as a bad record.
    damage = f"^{path}: (corrupt|truncated)"
    pattern = damage if on_error == "skip" else f"^{path}:"
    for txt_mode in ("document", "line"):  # jsonl lines and whole-file txt share the streams
        task = one_task(path, fmt)
        opts = ReadOptions(on_error=on_error, txt_mode=txt_mode)
        with pytest.raises(InputError, match=pattern):
            list(read_documents(task, opts, ReadStats()))
        txt_task = Task(str(path), "txt" + fmt[5:], task.size)
        with pytest.raises(InputError, match=pattern if txt_mode == "line" else damage):
            list(read_documents(txt_task, opts, ReadStats()))


def test_zstd_frame_boundaries_anywhere(tmp_path):
    payload = jsonl([{"text": f"d{i}"} for i in range(50)])
    for frames in (1, 2, 7, len(payload)):
        path = tmp_path / f"f{frames}.jsonl.zstd"
        path.write_bytes(zstd_frames(payload, frames))
        assert read_file(path) == [f"d{i}" for i in range(50)]


def test_missing_file_at_read_time(tmp_path):
    task = Task(str(tmp_path / "gone.jsonl"), "jsonl", 10)
    with pytest.raises(InputError, match="gone.jsonl: file not found"):
        list(read_documents(task, ReadOptions(), ReadStats()))


# --------------------------------------------------------------------------------------------
# bad records

BAD_JSONL = {
    "malformed_json": [b'{"text": "unterminated', b"[1, 2]", b'"just a string"'],
    "invalid_utf8": [b'{"text": "caf\xe9"}', b'{"text": "\\ud800 lone surrogate"}'],
    "missing_text": [b'{"body": "x"}', b'{"text": null}'],
    "non_string_text": [b'{"text": 5}', b'{"text": ["a"]}'],
    "empty_text": [b'{"text": ""}'],
}


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "jsonl.zst"])
@pytest.mark.parametrize("reason", sorted(BAD_JSONL))
def test_bad_jsonl_records(reason, fmt, tmp_path):
    for n, bad in enumerate(BAD_JSONL[reason]):
        payload = b'{"text": "ok1"}\n\n{"text": "ok2"}\r\n' + bad + b'\n{"text": "ok3"}\n'
        path = tmp_path / f"bad{n}.{fmt}"
        path.write_bytes(compress(fmt, payload))
        with pytest.raises(InputError, match=rf"^{path}:4: \S"):
            read_file(path)
        docs, stats, _ = read_all(expand_inputs([str(path)]), on_error="skip")
        assert docs == ["ok1", "ok2", "ok3"]
        assert stats.skipped == Counter({reason: 1}) and stats.documents == 3


def test_bad_records_in_split_files_are_counted_once(tmp_path):
    rows = [json.dumps({"text": f"doc{i}"}).encode() for i in range(100)]
    rows[10], rows[50], rows[51] = b"{oops", b'{"text": ""}', b'{"x": 1}'
    path = tmp_path / "a.jsonl"
    path.write_bytes(b"\n".join(rows))
    docs, stats, tasks = read_all(expand_inputs([str(path)]), 37, on_error="skip")
    assert len(tasks) > 10 and len(docs) == 97
    assert stats.skipped == Counter(malformed_json=1, empty_text=1, missing_text=1)


def test_txt_line_mode_bad_lines(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"one\n\ntwo\r\nbad \xff byte\n  \nthree")
    with pytest.raises(InputError, match=rf"^{path}:2: line is empty"):
        read_file(path, txt_mode="line")
    path.write_bytes(b"one\ntwo\r\nbad \xff byte\n  \nthree")
    with pytest.raises(InputError, match=rf"^{path}:3: invalid UTF-8"):
        read_file(path, txt_mode="line")
    path.write_bytes(b"one\n\ntwo\r\nbad \xff byte\n  \nthree")
    docs, stats, _ = read_all(expand_inputs([str(path)]), 5, txt_mode="line", on_error="skip")
    assert docs == ["one", "two", "  ", "three"]
    assert stats.skipped == Counter(empty_text=1, invalid_utf8=1)


@pytest.mark.parametrize("fmt", ["txt", "txt.gz", "txt.zst"])
def test_txt_document_mode_bad_files(fmt, tmp_path):
    empty = tmp_path / f"empty.{fmt}"
    empty.write_bytes(compress(fmt, b""))
    bad = tmp_path / f"bad.{fmt}"
    bad.write_bytes(compress(fmt, b"fine\nstill fine\nnot \xc3 fine\n"))
    with pytest.raises(InputError, match=rf"^{empty}:1: .*empty"):
        read_file(empty)
    with pytest.raises(InputError, match=rf"^{bad}:3: invalid UTF-8"):
        read_file(bad)
    docs, stats, _ = read_all(expand_inputs([str(tmp_path)]), on_error="skip")
    assert docs == [] and stats.skipped == Counter(empty_text=1, invalid_utf8=1)


# --------------------------------------------------------------------------------------------
# fields and filters


def test_get_field():
    record = {
        "text": "t",
        "none": None,
        "meta": '{"body": "from json string", "inner": {"x": 1}}',
        "nested": {"a": {"b": "deep"}},
        "dotted.key": "flat",
        "s": "plain string",
    }
    assert get_field(record, "text") == "t"
    assert get_field(record, "none") is None
    assert get_field(record, "absent") is MISSING
    assert get_field(record, "meta.body") == "from json string"
    assert get_field(record, "meta.inner.x") == 1
    assert get_field(record, "nested.a.b") == "deep"
    assert get_field(record, "nested.a.c") is MISSING
    assert get_field(record, "dotted.key") == "flat"
    assert get_field(record, "s.x") is MISSING
    assert get_field({"meta": "{not json"}, "meta.x") is MISSING


def test_dotted_text_field_through_json_string_meta(tmp_path):
    path = tmp_path / "proofpile.jsonl"
    rows = [
        {"text": "outer", "meta": json.dumps({"body": "inner", "lang": "en"})},
        {"text": "outer2", "meta": json.dumps({"lang": "en"})},
    ]
    path.write_bytes(jsonl(rows))
    docs, stats, _ = read_all(expand_inputs([str(path)]), text_field="meta.body", on_error="skip")
    assert docs == ["inner"] and stats.skipped == Counter(missing_text=1)
    with pytest.raises(InputError, match=rf"{path}:2: no field 'meta.body'"):
        read_file(path, text_field="meta.body")


@pytest.mark.parametrize(
    "expr, field, op, value",
    [
        ('src in ["music", "abc"]', "src", "in", ("music", "abc")),
        ("src not in ['x']", "src", "not in", ("x",)),
        ('meta.lang == "en"', "meta.lang", "==", "en"),
        ("lang != 'de'", "lang", "!=", "de"),
        ("score >= 0.5", "score", ">=", 0.5),
        ("score<3", "score", "<", 3),
        ("n <= -2", "n", "<=", -2),
        ("n > 1e3", "n", ">", 1000.0),
        ("flag == True", "flag", "==", True),
        ("x == None", "x", "==", None),
        ("index in (1, 2)", "index", "in", (1, 2)),
        ("sub-set   not   in   {'b', 'a'}", "sub-set", "not in", ("a", "b")),
    ],
)
def test_parse_where(expr, field, op, value):
    f = parse_where(expr)
    assert (f.field, f.op, f.value) == (field, op, value)
    assert parse_where(f.describe()) == f
    hash(f)


@pytest.mark.parametrize(
    "expr",
    [
        "",
        "src",
        "src ==",
        "== 'a'",
        "src = 'a'",
        "src == en",
        "src in 'abc'",
        "src in [1",
        "src ~ 'a'",
        "src == {'a': 1}",
        "src in [[1]]",
        "1src == 1",
        "src == 'a' extra",
    ],
)
def test_parse_where_errors(expr):
    with pytest.raises(MixerError) as info:
        parse_where(expr)
    message = str(info.value)
    assert "\n" not in message and "bad filter" in message


def test_row_filter_matching():
    record = {"src": "music", "score": 0.7, "meta": '{"lang": "en"}', "none": None}
    assert parse_where("src in ['music', 'abc']").matches(record)
    assert not parse_where("src not in ['music']").matches(record)
    assert parse_where("meta.lang == 'en'").matches(record)
    assert parse_where("score >= 0.5").matches(record)
    assert not parse_where("score < 0.5").matches(record)
    assert not parse_where("src > 1").matches(record)  # incomparable: no match
    assert parse_where("none == None").matches(record)
    for expr in ("missing != 'x'", "missing not in ['x']", "missing == None", "meta.x != 1"):
        assert not parse_where(expr).matches(record), expr
    assert RowFilter("src", "==", "music").describe() == "src == 'music'"


def test_where_filters_count_filtered_rows(tmp_path):
    path = tmp_path / "a.jsonl"
    rows = [{"text": f"t{i}", "src": ["a", "b", "c"][i % 3], "score": i} for i in range(30)]
    rows[4]["text"] = ""  # filtered out before its text is checked: not an error
    path.write_bytes(jsonl(rows))
    where = (parse_where("src in ['a', 'b']"), parse_where("score >= 10"))
    docs, stats, _ = read_all(expand_inputs([str(path)]), 50, where=where)
    assert docs == [r["text"] for r in rows if r["src"] in "ab" and r["score"] >= 10]
    assert stats.filtered == 30 - len(docs) and stats.documents == len(docs)


def test_where_is_refused_for_text_files(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    options = ReadOptions(where=(parse_where("a == 1"),))
    with pytest.raises(MixerError, match="^a where= filter needs records with fields; .*a.txt"):
        plan_tasks(expand_inputs([str(tmp_path)]), options=options)


def test_read_options_hash_without_storage_options():
    """(Their fields are validated once, by TokenizeJob: tests/test_output.py.)"""
    a = ReadOptions(where=(parse_where("a == 1"),), storage_options={"anon": True})
    assert hash(a) == hash(ReadOptions(where=(parse_where("a == 1"),)))
    with pytest.raises(MixerError):
        plan_tasks([], 0)


# --------------------------------------------------------------------------------------------
# formats and inputs


@pytest.mark.parametrize(
    "name, fmt",
    [
        ("a.jsonl", "jsonl"),
        ("a.json", "jsonl"),
        ("A.NDJSON", "jsonl"),
        ("a.jsonl.gz", "jsonl.gz"),
        ("a.json.gz", "jsonl.gz"),
        ("a.jsonl.zst", "jsonl.zst"),
        ("s3://b/dclm/x.jsonl.zstd", "jsonl.zst"),
        ("a.json.zst", "jsonl.zst"),
        ("d/a.parquet", "parquet"),
        ("a.txt", "txt"),
        ("README.md", "txt"),
        ("a.txt.gz", "txt.gz"),
        ("a.txt.zst", "txt.zst"),
    ],
)
def test_detect_format(name, fmt):
    assert detect_format(name) == fmt


@pytest.mark.parametrize("name", ["a.csv", "a.gz", "a.tar.gz", "noext", "a.jsonl.bz2"])
def test_detect_format_unknown(name):
    with pytest.raises(MixerError, match=f"unknown format for {name}; pass format= one of"):
        detect_format(name)


def test_format_override(tmp_path):
    path = tmp_path / "corpus.data"
    path.write_bytes(gzip.compress(b'{"text": "hi"}\n'))
    with pytest.raises(MixerError, match="unknown format"):
        expand_inputs([str(path)])
    files = expand_inputs([str(path)], format="jsonl.gz")
    assert files == [InputFile(str(path), path.stat().st_size, "jsonl.gz")]
    assert read_all(files)[0] == ["hi"]
    with pytest.raises(MixerError, match="^format='csv' is not one of"):
        expand_inputs([str(path)], format="csv")


def make_tree(root: Path) -> None:
    for rel in [
        "b.jsonl",
        "a.jsonl.zst",
        "sub/c.parquet",
        "sub/deeper/d.txt",
        "sub/notes",
        ".hidden.jsonl",
        ".cache/e.jsonl",
        "manifest.json",
        "shard-00000.bin",
        "shard-00000.idx",
    ]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x" * len(rel))


def test_expand_directory_recursively_skipping_hidden_and_store_files(tmp_path):
    make_tree(tmp_path)
    files = expand_inputs([str(tmp_path)])
    assert [f.url for f in files] == [
        str(tmp_path / r) for r in ["a.jsonl.zst", "b.jsonl", "sub/c.parquet", "sub/deeper/d.txt"]
    ]
    assert [f.format for f in files] == ["jsonl.zst", "jsonl", "parquet", "txt"]
    assert files[1].size == len("b.jsonl")
    forced = expand_inputs([str(tmp_path)], format="jsonl")
    assert {f.format for f in forced} == {"jsonl"}
    assert str(tmp_path / "sub/notes") in [f.url for f in forced]
    assert not any(f.url.endswith((".bin", ".idx", "manifest.json")) for f in forced)


def test_expand_globs_order_and_duplicates(tmp_path, monkeypatch):
    make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    files = expand_inputs(["sub/**/*.txt", f"file://{tmp_path}/*.jsonl*", "b.jsonl", "sub"])
    assert [f.url for f in files] == [
        str(tmp_path / r) for r in ["sub/deeper/d.txt", "a.jsonl.zst", "b.jsonl", "sub/c.parquet"]
    ]
    assert all(os.path.isabs(f.url) for f in files)


def test_expand_missing_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "data.csv").write_text("a,b")
    cases = [
        (str(tmp_path / "nope.jsonl"), "does not exist"),
        (str(tmp_path / "*.parquet"), ""),
        (str(tmp_path / "empty"), ""),
        (str(tmp_path / "other"), "unknown format, e.g. 'data.csv'; pass format=)"),
    ]
    for spec, extra in cases:
        with pytest.raises(MixerError, match="no input files match") as info:
            expand_inputs([spec])
        assert repr(spec) in str(info.value) and extra in str(info.value)


def test_expand_memory_urls(mem):
    fs, root = mem
    for name in ["x/b.jsonl", "x/a.jsonl", "x/.hidden.jsonl", "x/y/c.parquet"]:
        fs.pipe(f"{root}/{name}", b"{}")
    files = expand_inputs([f"memory://{root}/x"])
    assert [f.url for f in files] == [
        f"memory://{root}/x/a.jsonl",
        f"memory://{root}/x/b.jsonl",
        f"memory://{root}/x/y/c.parquet",
    ]
    globbed = expand_inputs([f"memory://{root}/x/*.jsonl"])
    assert [f.url for f in globbed] == [f.url for f in files[:2]]
    with pytest.raises(MixerError, match=r"no input files match 'memory://.*/x/\*\.txt'"):
        expand_inputs([f"memory://{root}/x/*.txt"])


def test_task_describe_and_weight():
    whole = Task("/d/a.jsonl.gz", "jsonl.gz", 1000)
    assert whole.describe() == {"url": "/d/a.jsonl.gz", "format": "jsonl.gz", "size": 1000}
    assert whole.weight == 1000
    part = Task("/d/a.jsonl", "jsonl", 1000, byte_range=(200, 450), version="7")
    assert part.describe() == {
        "url": "/d/a.jsonl",
        "format": "jsonl",
        "size": 1000,
        "version": "7",
        "byte_range": [200, 450],
    }
    assert part.weight == 250
    json.dumps([whole.describe(), part.describe()])


def test_plans_do_not_depend_on_anything_but_files_and_chunk(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(jsonl([{"text": "x" * 50}] * 100))
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(jsonl([{"text": "y"}] * 100)))
    files = expand_inputs([str(tmp_path)])
    first = plan_tasks(files, 1000)
    assert first == plan_tasks(list(files), 1000)
    assert [t.format for t in first].count("jsonl.gz") == 1
    sizes = [t.weight for t in first if t.byte_range]
    assert max(sizes) - min(sizes) <= 1 and max(sizes) <= 1000


def test_module_exports():
    assert files.FORMATS == (
        "jsonl",
        "jsonl.gz",
        "jsonl.zst",
        "parquet",
        "txt",
        "txt.gz",
        "txt.zst",
    )


def _stdlib_record(line: bytes):
    """The reference: what a line means to `json` (the reader's behaviour before orjson)."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid_utf8"
    try:
        record = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None if not text.strip() else "malformed_json"
    return record if isinstance(record, dict) else "malformed_json"


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
JSON_FRAGMENTS = st.sampled_from(
    [
        b"NaN",
        b"-Infinity",
        b"1e400",
        b"18446744073709551616",
        b'"\\ud800"',
        b'"\\udfff x"',
        b"\xef\xbb\xbf",
        b"\xff",
        b"\xc3",
        b" ",
        b"\t",
        b"{",
        b"}",
        b'"',
        b",",
        b":",
        b"\\",
    ]
)


@given(
    value=st.dictionaries(st.text(), JSON_VALUES, max_size=4) | JSON_VALUES,
    cut=st.integers(0, 200),
    insert=st.lists(JSON_FRAGMENTS, max_size=3),
)
@example(value={"": -(2**63) - 1}, cut=0, insert=[])  # orjson reads it as a float
@example(value={"": [float("inf")], "0": -(2**63) - 1}, cut=0, insert=[])  # json reads the line
@settings(max_examples=600, deadline=None)
def test_fast_json_path_reads_every_line_as_the_standard_library_does(value, cut, insert):
    """orjson parses, `json` decides whatever orjson refuses: same records, same rejections."""
    line = json.dumps(value, allow_nan=True).encode()
    line = line[:cut] + b"".join(insert) + line[cut:]
    want = _stdlib_record(line)
    for fast in (False, True):
        try:
            got = readers._parse_json(line, fast)
        except readers._BadRecord as bad:
            got = bad.reason
        if fast and _orjson_reads(line):  # its one difference: integers beyond 64 bits -> float
            want = _big_ints_as_floats(want)
        assert repr(got) == repr(want)  # repr: NaN != NaN; 1 == 1.0 == True would hide a change


def _orjson_reads(line: bytes) -> bool:
    try:
        orjson.loads(line)
    except orjson.JSONDecodeError:
        return False  # then `json` reads the whole line, big integers included
    return True


def _big_ints_as_floats(value):
    if isinstance(value, dict):
        return {k: _big_ints_as_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_big_ints_as_floats(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return value if -(2**63) <= value < 2**64 else float(value)
    return value
