"""Random bytes in every input format: a clean MixerError or documents, never a crash or hang.

Derandomized so CI is reproducible; explore more with a larger max_examples (1,500 damaged
files per format and 500 random payloads per kind passed when this was written)."""

from __future__ import annotations

import gzip
import json

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mixer.errors import MixerError
from mixer.ingest import inputs, readers, where

FORMATS = {
    "jsonl": lambda b: b,
    "jsonl.gz": lambda b: b,
    "jsonl.zst": lambda b: b,
    "parquet": lambda b: b,
    "txt": lambda b: b,
    # Well-formed containers around random payloads reach the JSON/UTF-8 layer too.
    "jsonl.gz.valid": lambda b: gzip.compress(b, mtime=0),
    "jsonl.zst.valid": lambda b: zstandard.ZstdCompressor().compress(b),
}


def read_all(path: str, fmt: str, on_error: str) -> list[str]:
    files = inputs.expand_inputs([path], fmt)
    options = readers.ReadOptions(
        on_error=on_error, txt_mode="line" if fmt == "txt" else "document"
    )
    out: list[str] = []
    for task in inputs.plan_tasks(files, 64, options):
        out.extend(readers.read_documents(task, options, readers.ReadStats()))
    return out


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", sorted(FORMATS))
@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    payload=st.one_of(
        st.binary(max_size=400),
        st.lists(
            st.sampled_from([b'{"text": "a"}', b"{", b'{"text": 1}', b"\xff\xfe", b"\n", b"PAR1"]),
            max_size=20,
        ).map(b"\n".join),
    ),
    on_error=st.sampled_from(["fail", "skip"]),
)
def test_random_bytes_give_documents_or_a_clean_error(tmp_path, kind, payload, on_error):
    fmt = kind.removesuffix(".valid")
    path = tmp_path / f"fuzz.{fmt}"
    path.write_bytes(FORMATS[kind](payload))
    try:
        documents = read_all(str(path), fmt, on_error)
    except MixerError as e:
        assert "\n" not in str(e)
        assert "fuzz" in str(e)
        return
    assert all(isinstance(d, str) for d in documents)


def valid_file(fmt: str) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    lines = b"".join(b'{"text": "document %d \xc3\xa9"}\n' % i for i in range(50))
    if fmt == "parquet":
        sink = io.BytesIO()
        table = pa.table({"text": [f"document {i}" for i in range(50)]})
        pq.write_table(table, sink, row_group_size=10)
        return sink.getvalue()
    return {
        "jsonl": lines,
        "jsonl.gz": gzip.compress(lines, mtime=0),
        "jsonl.zst": zstandard.ZstdCompressor().compress(lines),
    }[fmt]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "jsonl.zst", "parquet"])
@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data(), on_error=st.sampled_from(["fail", "skip"]))
def test_damaged_real_files_give_documents_or_a_clean_error(tmp_path, fmt, data, on_error):
    raw = bytearray(valid_file(fmt))
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    path = tmp_path / f"fuzz.{fmt}"
    path.write_bytes(bytes(raw))
    try:
        documents = read_all(str(path), fmt, on_error)
    except MixerError as e:
        assert "\n" not in str(e) and "fuzz" in str(e)
        return
    assert all(isinstance(d, str) for d in documents)


# Text values with lone surrogates, surrogate pairs written as escapes, non-ASCII and plain
# ASCII, top level or inside a JSON-string `meta` read through a dotted field.
_TEXTS = st.text(
    alphabet=st.sampled_from(["a", " ", "é", "漢", "😀", "\ud800", "\udc00", "\udbff", "\udfff"]),
    max_size=6,
)


@pytest.mark.timeout(120)
@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    texts=st.lists(_TEXTS, min_size=1, max_size=8),
    nested=st.booleans(),
    ascii_json=st.booleans(),
)
def test_surrogate_check_skipped_for_orjson_records_only(
    tmp_path_factory, texts, nested, ascii_json
):
    """The fast path (orjson first, no surrogate re-check of its records) gives the same
    documents and skip counts as the checked path (a --where matching every record, which
    parses every line with `json` and checks every text), and the same first error."""
    path = tmp_path_factory.mktemp("surrogates") / "a.jsonl"
    lines = []
    for text in texts:
        if nested:
            record = {"meta": json.dumps({"text": text}, ensure_ascii=ascii_json)}
        else:
            record = {"text": text, "other": text}
        try:
            lines.append(json.dumps(record, ensure_ascii=ascii_json).encode("utf-8"))
        except UnicodeEncodeError:  # a raw lone surrogate cannot be written as UTF-8
            lines.append(json.dumps(record).encode())
    path.write_bytes(b"\n".join(lines) + b"\n")
    field = "meta.text" if nested else "text"
    everything = where.parse_where(f"{field} != '\\x00never'")
    results = []
    for filters in ((), (everything,)):
        outcome = []
        for on_error in ("skip", "fail"):
            options = readers.ReadOptions(text_field=field, on_error=on_error, where=filters)
            stats = readers.ReadStats()
            task = inputs.plan_tasks(inputs.expand_inputs([str(path)]), options=options)[0]
            try:
                docs = list(readers.read_documents(task, options, stats))
            except MixerError as e:
                docs = [f"error: {e}"]
            outcome.append((docs, dict(stats.skipped)))
        results.append(outcome)
    assert results[0] == results[1]


_LINES = st.sampled_from(
    [
        b'{"text": "plain ascii"}',
        '{"text": "caf\u00e9 \U0001f600", "id": 3}'.encode(),
        b'{"text": "crlf"}\r',  # with the b"\n" joined after it: a CRLF line
        b"",  # blank
        b"   ",
        b'{"text": "x"',  # malformed
        b"[1, 2]",  # not an object
        b'{"id": 1}',  # no text
        b'{"text": null}',
        b'{"text": 7}',
        b'{"text": ""}',
        b'{"text": "\\ud800 lone"}',  # orjson refuses, json gives a lone surrogate
        b'{"text": "big", "n": 123456789012345678901234567890}',
        b'{"text": "' + b"q" * 30 + b'"}',  # over limit / 4 characters, within the limit
        b'{"text": "' + "\u00e9".encode() * 30 + b'"}',  # within by characters, over by bytes
        b'{"text": "' + b"w" * 70 + b'"}',  # a line over the limit
        b'\xff{"text": "bad utf-8"}',
    ]
)


@pytest.mark.timeout(120)
@settings(max_examples=200, deadline=None, derandomize=True)
@given(lines=st.lists(_LINES, min_size=1, max_size=12), fmt=st.sampled_from(["jsonl", "zst"]))
def test_one_loop_jsonl_path_matches_the_general_path(tmp_path_factory, lines, fmt):
    """jsonl without filters reads in one loop (`_jsonl_numbered`): the same (record number,
    document) pairs, counts (documents, records, skipped, probe) and first error as the
    general line path (`_numbered`), for every kind of line, in any order."""
    data = b"\n".join(lines) + b"\n"
    path = tmp_path_factory.mktemp("oneloop") / f"a.jsonl{'.zst' if fmt == 'zst' else ''}"
    path.write_bytes(zstandard.ZstdCompressor().compress(data) if fmt == "zst" else data)
    results = []
    for read in (readers._read_part, readers._numbered):
        outcome = []
        for on_error in ("skip", "fail"):
            options = readers.ReadOptions(on_error=on_error, max_document_bytes=64)
            stats = readers.ReadStats()
            task = inputs.plan_tasks(inputs.expand_inputs([str(path)]), options=options)[0]
            docs: list = []
            try:
                docs.extend(read(task.parts[0], options, stats))
            except MixerError as e:
                docs.append(f"error: {e}")
            probe = stats.probe
            counts = (stats.documents, stats.records, dict(stats.skipped), stats.filtered)
            outcome.append((docs, counts, probe.records, probe.matched, probe.keys))
        results.append(outcome)
    assert results[0] == results[1]
