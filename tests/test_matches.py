"""No silent empties (`--where`, text fields, empty stores) and `mixer peek`."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mixer import TokenStore
from mixer.cli import main
from mixer.errors import MixerError
from mixer.ingest import TokenizeJob, tokenize
from mixer.ingest.matches import MAX_VALUES, FieldProbe, Probe
from mixer.ingest.peek import format_peek, peek
from mixer.ingest.select import Selection
from mixer.ingest.where import parse_where
from mixer.store.format import MANIFEST

SAMPLES = Path(__file__).resolve().parents[1] / "pipelines" / "samples"


def write_jsonl(path: Path, records: list) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def job(tmp_path: Path, tokenizer_path: str, inputs: list[str], **options) -> TokenizeJob:
    return TokenizeJob(
        inputs=tuple(inputs), tokenizer=tokenizer_path, out=str(tmp_path / "store"),
        workers=0, **options,
    )  # fmt: skip


def two_inputs(tmp_path: Path) -> tuple[str, str]:
    a = write_jsonl(
        tmp_path / "a" / "x.jsonl", [{"text": f"a {i}", "src": "abc"} for i in range(6)]
    )
    b = write_jsonl(
        tmp_path / "b" / "y.jsonl",
        [{"text": f"b {i}", "src": s} for i, s in enumerate(["kern"] * 4 + ["midi"] * 2)],
    )
    return str(Path(a).parent), str(Path(b).parent)


def test_a_where_matching_no_record_of_one_input_names_it_and_its_values(tmp_path, tokenizer_path):
    a, b = two_inputs(tmp_path)
    with pytest.raises(MixerError) as e:
        tokenize(job(tmp_path, tokenizer_path, [a, b], where=("src == 'abc'",)), progress=False)
    msg = str(e.value)
    assert "where=\"src == 'abc'\"" in msg and repr(b) in msg and repr(a) not in msg
    assert "'kern' (4), 'midi' (2) (2 distinct)" in msg
    assert not (tmp_path / "store" / MANIFEST).exists()


def test_a_partial_match_is_fine_and_counted(tmp_path, tokenizer_path):
    a, b = two_inputs(tmp_path)
    manifest = tokenize(
        job(tmp_path, tokenizer_path, [a, b], where=("src in ['abc', 'kern']",)), progress=False
    )
    assert (manifest["num_documents"], manifest["filtered"]) == (10, 2)
    assert all("probe" not in shard for shard in manifest["shards"])  # not in the store format
    TokenStore.open(tmp_path / "store").verify()


def test_a_where_field_missing_in_every_record_is_an_error_naming_the_keys(
    tmp_path, tokenizer_path
):
    a, _ = two_inputs(tmp_path)
    with pytest.raises(MixerError, match=r"field 'meta.src' is missing in every one of the 6 "
                       r"records of input .*\(records have keys src, text\)"):  # fmt: skip
        tokenize(job(tmp_path, tokenizer_path, [a], where=("meta.src == 'abc'",)), progress=False)


def test_filters_that_each_match_but_never_together(tmp_path, tokenizer_path):
    _, b = two_inputs(tmp_path)  # src kern/midi; texts 'b 0'..'b 5'
    where = ("src == 'kern'", "text == 'b 5'")
    with pytest.raises(MixerError, match=r"together match none .*\"src == 'kern'\" 4, "):
        tokenize(job(tmp_path, tokenizer_path, [b], where=where), progress=False)


def test_a_text_field_missing_everywhere_is_an_error_even_when_skipping(tmp_path, tokenizer_path):
    a, _ = two_inputs(tmp_path)
    with pytest.raises(MixerError, match=r"text field 'body' is missing or null in every one"):
        tokenize(
            job(tmp_path, tokenizer_path, [a], text_field="body", on_error="skip"), progress=False
        )


def test_an_input_whose_every_record_is_skipped_is_an_error(tmp_path, tokenizer_path):
    good = write_jsonl(tmp_path / "good" / "x.jsonl", [{"text": "fine"}])
    bad = tmp_path / "bad" / "y.jsonl"
    bad.parent.mkdir()
    bad.write_text("not json\n{broken\n")
    with pytest.raises(MixerError, match=r"input '.*bad' yields no document: every record was "
                       r"skipped \(malformed_json 2\)"):  # fmt: skip
        tokenize(
            job(tmp_path, tokenizer_path, [good, str(bad.parent)], on_error="skip"), progress=False
        )


def test_musicpile_sample_with_guessed_src_values_is_refused(tmp_path, tokenizer_path, capsys):
    """The issue's case: an `in` test on guessed values used to exit 0 with an empty store."""
    args = ["tokenize", str(SAMPLES / "musicpile"), "-t", tokenizer_path, "-o",
            str(tmp_path / "m"), "--workers", "0", "--no-progress"]  # fmt: skip
    with pytest.raises(SystemExit) as done:
        main([*args, "--where", "src in ['abc', 'irishman', 'kern']"])
    err = capsys.readouterr().err
    assert done.value.code == 1 and err.startswith("mixer: error: --where")
    assert "'synthetic:abc'" in err
    assert err.rstrip().endswith(f"; look with: mixer peek {SAMPLES / 'musicpile'} --field src")


def test_a_filter_that_matches_nothing_points_the_library_caller_at_peek(tmp_path, tokenizer_path):
    """The library names the function and its arguments (no CLI syntax); `look` carries them."""
    spec = str(SAMPLES / "musicpile")
    with pytest.raises(MixerError) as info:
        tokenize(job(tmp_path, tokenizer_path, [spec], where=("src in ['abc']",)), progress=False)
    message = str(info.value)
    assert info.value.look == (spec, "src") and "--" not in message
    assert message.endswith(f"; look at its values with peek([{spec!r}], field='src')")


def test_probe_counts_are_exact_until_the_value_bound(tmp_path):
    where = (parse_where("n >= 3"),)
    probe = Probe()
    for i in range(MAX_VALUES + 10):
        probe.admit({"n": i, "text": "t"}, where)
    assert (probe.records, probe.matched) == (MAX_VALUES + 10, MAX_VALUES + 7)
    seen = probe.fields[0]
    assert (seen.present, seen.passed, len(seen.values), seen.other) == (
        MAX_VALUES + 10, MAX_VALUES + 7, MAX_VALUES, 10,
    )  # fmt: skip
    merged = Probe.from_json(json.loads(json.dumps(probe.to_json())))
    merged.merge(probe)
    assert merged.records == 2 * probe.records and merged.fields[0].values["0"] == 2
    long = FieldProbe()
    long.add("x" * 500)
    assert list(long.values) == [repr("x" * 40) + "…"]


def test_peek_reports_keys_texts_and_exact_value_counts_of_the_first_records():
    report = peek([str(SAMPLES / "musicpile")], field="src", limit=300, max_files=2)
    files = sorted((SAMPLES / "musicpile" / "data").glob("*.parquet"))
    expected: Counter = Counter()
    for path in files:
        expected.update(pq.read_table(path).column("src").to_pylist()[:150])
    assert report.records == 300 and len(report.read_from) == 2
    assert report.values == Counter({repr(k): v for k, v in expected.items()})
    assert report.schema == {"id": "int64", "text": "string", "src": "string"}
    assert report.text_present == 300 and len(report.texts) == 3
    text = format_peek(report)
    assert "field 'src': present in 300 of 300 records, 6 distinct values:" in text


def test_peek_follows_the_split_rule_and_shows_nested_meta_keys(capsys):
    root = str(SAMPLES / "proofpile")
    train = peek([root], field="meta.config", limit=1000)
    everything = peek([root], limit=1000, selection=Selection(all_splits=True))
    assert (train.files, everything.files) == (2, 4)
    assert train.records == 520 and everything.records == 20 + 20 + 250 + 250  # 250 a file
    assert {"meta", "text", "meta.config", "meta.file", "meta.subset_name"} == set(train.keys)
    assert train.keys["meta.file"] == 520 and train.types["meta"] == "dict"
    assert set(train.values) == {"'arxiv'"}
    assert train.field_present == train.keys["meta.config"] < 520
    with pytest.raises(SystemExit) as done:
        main(["peek", root, "--field", "meta.config", "--limit", "50", "--json"])
    assert done.value.code in (0, None)
    out = json.loads(capsys.readouterr().out)
    assert out["records"] == 50 and out["field"] == "meta.config"


def test_peek_on_plain_text_shows_texts_and_refuses_a_field(tmp_path):
    (tmp_path / "a.txt").write_text("one whole document\nof two lines")
    report = peek([str(tmp_path)])
    assert report.records == 1 and report.texts[0][1] == "one whole document\nof two lines"
    with pytest.raises(MixerError, match="plain text files have no fields"):
        peek([str(tmp_path)], field="src")
