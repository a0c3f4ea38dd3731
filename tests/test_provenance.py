"""Provenance: every document knows its input file and record; `mixer explain` shows a step."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_ingest import documents
from tokenizers import Tokenizer

from mixer.cli import main
from mixer.errors import StoreError
from mixer.ingest.driver import tokenize
from mixer.ingest.job import TokenizeJob
from mixer.mix.sampler import MixSampler
from mixer.mix.spec import MixSpec
from mixer.store.reader import TokenStore
from mixer.store.writer import write_store


def line_corpus(n: int, seed: int) -> tuple[list[str | None], bytes]:
    """Lines of a jsonl file, with blank and malformed lines mixed in; the texts by line."""
    texts: list[str | None] = []
    lines = []
    for k, text in enumerate(documents(n, seed)):
        if k % 7 == 3:
            lines.append("")
            texts.append(None)
        if k % 11 == 5:
            lines.append("{not json")
            texts.append(None)
        lines.append(json.dumps({"text": text}))
        texts.append(text)
    return texts, ("\n".join(lines) + "\n").encode()


def cli(*args: str) -> int:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    return info.value.code


def decoded(tokenizer: Tokenizer, store: TokenStore, d: int) -> str:
    return tokenizer.decode(store.document(d)[:-1].tolist())  # without the EOS


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tokenizer_path) -> dict:
    root = tmp_path_factory.mktemp("prov")
    plain_texts, plain = line_corpus(150, 1)
    (root / "plain.jsonl").write_bytes(plain)
    gz_texts, gz = line_corpus(60, 2)
    (root / "packed.jsonl.gz").write_bytes(gzip.compress(gz))
    rows = documents(90, 3)
    table = pa.table({"text": rows})
    pq.write_table(table, root / "rows.parquet", row_group_size=10)
    store = root / "store"
    tokenize(
        TokenizeJob(
            inputs=tuple(str(root / n) for n in ("plain.jsonl", "packed.jsonl.gz", "rows.parquet")),
            tokenizer=tokenizer_path,
            out=str(store),
            workers=0,
            chunk_bytes=1500,  # many byte ranges of plain.jsonl, several row-group tasks
            on_error="skip",
        )
    )
    expected = {
        str(root / "plain.jsonl"): plain_texts,
        str(root / "packed.jsonl.gz"): gz_texts,
        str(root / "rows.parquet"): rows,
    }
    return {"store": TokenStore.open(store), "expected": expected, "root": root}


def test_every_document_names_its_input_and_record(corpus, tokenizer_path):
    store, expected = corpus["store"], corpus["expected"]
    tokenizer = Tokenizer.from_file(tokenizer_path)
    assert store.has_provenance
    assert len({s.entry["input"]["url"] for s in store.shards}) == 3
    assert sum(1 for s in store.shards if "byte_range" in s.entry["input"]) > 3
    assert sum(1 for s in store.shards if "row_groups" in s.entry["input"]) > 1
    seen = {url: set() for url in expected}
    for d in range(store.num_documents):
        url, record = store.origin(d)
        assert decoded(tokenizer, store, d) == expected[url][record]
        seen[url].add(record)
    for url, texts in expected.items():  # every good record once, nothing else
        assert seen[url] == {k for k, t in enumerate(texts) if t is not None}


def test_inspect_says_whether_a_store_has_provenance(corpus, tmp_path, capsys):
    assert cli("inspect", str(corpus["store"].root), "--json") == 0
    assert json.loads(capsys.readouterr().out)["provenance"] is True
    write_store(tmp_path / "old", [[1, 2, 0]] * 3, vocab_size=10, eos_id=0)
    assert cli("inspect", str(tmp_path / "old")) == 0
    assert "provenance none" in capsys.readouterr().out


def test_stores_without_provenance_still_open_and_mix(tmp_path):
    write_store(tmp_path / "old", [[1, 2, 0]] * 20, vocab_size=10, eos_id=0)
    store = TokenStore.open(tmp_path / "old")
    assert not store.has_provenance and store.origin(3) is None
    spec = MixSpec.from_dict(
        {
            "seq_len": 4,
            "seed": 0,
            "total_tokens": 40,
            "source": [{"name": "old", "store": str(tmp_path / "old"), "weight": 1.0}],
        }
    )
    pieces = MixSampler(spec).provenance(2)
    assert pieces and all(p["input"] is None and p["record"] is None for p in pieces)


def test_a_damaged_provenance_file_is_refused_at_open_or_by_verify(corpus, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(corpus["store"].root, copy)
    shard = next(s for s in TokenStore.open(copy).shards if s.entry["documents"] > 0)
    data = bytearray(shard.rec_path.read_bytes())
    data[0] ^= 1
    shard.rec_path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"\.rec: sha256 .* does not match the manifest"):
        TokenStore.open(copy).verify()
    shard.rec_path.write_bytes(bytes(data[:-1]))
    with pytest.raises(StoreError, match=r"\.rec: .* bytes on disk, manifest says"):
        TokenStore.open(copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["shards"][0]["rec_dtype"] = "float32"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="rec_dtype 'float32' is not one of"):
        TokenStore.open(copy)


@pytest.fixture(scope="module")
def mix_spec(corpus) -> Path:
    path = corpus["root"] / "mix.toml"
    path.write_text(
        "seq_len = 16\nseed = 5\nsteps = 20\nglobal_batch_size = 6\n"
        f'[[source]]\nname = "prov"\nstore = "{corpus["store"].root}"\nweight = 1.0\n'
    )
    return path


def test_provenance_pieces_tile_the_block_with_the_documents_tokens(mix_spec):
    sampler = MixSampler(MixSpec.from_toml(mix_spec))
    store = sampler.stores[0]
    for i in range(0, len(sampler), 5):
        pieces = sampler.provenance(i)
        assert pieces[0]["start"] == 0 and pieces[-1]["stop"] == 17
        assert all(a["stop"] == b["start"] for a, b in zip(pieces, pieces[1:], strict=False))
        rebuilt = np.concatenate(
            [
                store.document(p["document"])[p["offset"] : p["offset"] + p["stop"] - p["start"]]
                for p in pieces
            ]
        )
        assert np.array_equal(rebuilt, sampler[i])
        assert all(p["source"] == "prov" and p["input"] is not None for p in pieces)


def test_mixer_explain_prints_each_row_s_documents(mix_spec, capsys, tokenizer_path):
    assert (
        cli("explain", str(mix_spec), "--step", "3", "--json", "--tokenizer", tokenizer_path) == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert [r["index"] for r in out["rows"]] == list(range(18, 24))
    sampler = MixSampler(MixSpec.from_toml(mix_spec))
    for row in out["rows"]:
        assert row["documents"] == [
            {**p, "text": row["documents"][k]["text"]}
            for k, p in enumerate(sampler.provenance(row["index"]))
        ]
        assert all(d["text"] for d in row["documents"])
    assert cli("explain", str(mix_spec), "--step", "3", "--rank", "1", "--world-size", "2") == 0
    text = capsys.readouterr().out
    assert "row 3 (rank 1, block 21): prov block" in text and "row 2 " not in text
    assert ".jsonl" in text or ".parquet" in text
    assert "'" in text.split("\n", 2)[2]  # previews decoded with the store's tokenizer copy
    assert cli("explain", str(mix_spec), "--step", "20") == 1
    assert "mixer: error: --step 20 outside [0, 20)" in capsys.readouterr().err


def test_mixer_explain_applies_a_saved_loader_state(mix_spec, tmp_path, capsys):
    from mixer.mix.loader import BatchIterator

    it = BatchIterator(MixSampler(MixSpec.from_toml(mix_spec)), batch_size=6)
    it.skip_steps(5, 7)
    it.set_weights({"prov": 1.0}, at_step=4)
    state = tmp_path / "state.json"
    state.write_text(json.dumps(it.state_dict()))
    assert cli("explain", str(mix_spec), "--step", "5", "--state", str(state), "--json") == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert all(r["skipped"] and r["phase"] == "main@24" for r in rows)
    assert [r["block"] for r in rows] == [it.sampler.locate(i).block for i in range(30, 36)]
    state.write_text("[1]")
    assert cli("explain", str(mix_spec), "--step", "5", "--state", str(state)) == 1
    assert "expected a JSON object (a loader state_dict)" in capsys.readouterr().err


def test_record_bases_add_up_the_earlier_tasks_of_each_file_and_stop_at_an_unknown():
    from mixer.store.format import record_base

    def entry(url, start, count, kind="byte_range"):
        return {"input": {"url": url, kind: [start, start + 10]}, "input_records": count}

    entries = [
        entry("a", 20, 3),
        entry("a", 0, 5),
        entry("b", 0, 7, "row_groups"),
        entry("a", 10, 4),
        entry("b", 2, None, "row_groups"),  # a task without a count: later ones are unknown
        entry("b", 5, 1, "row_groups"),
        {"input": {"url": "c", "format": "jsonl"}, "input_records": 9},
        {"name": "exported"},
    ]
    assert record_base(entries) == [9, 0, 0, 5, 7, None, 0, None]


def test_mixer_explain_places_steps_of_a_run_resumed_at_another_batch_size(
    corpus, tmp_path, capsys
):
    """A spec without global_batch_size, run at G = 6 for 5 steps and resumed at G = 4: step 7
    is blocks [38, 42), not 7 x 4; the state records where each batch size began."""
    from mixer.mix.loader import BatchIterator

    spec = tmp_path / "free.toml"
    spec.write_text(
        f"seq_len = 16\nseed = 5\ntotal_tokens = {120 * 16}\n"
        f'[[source]]\nname = "prov"\nstore = "{corpus["store"].root}"\nweight = 1.0\n'
    )
    sampler = MixSampler(MixSpec.from_toml(spec))
    first = BatchIterator(sampler, batch_size=6)
    for _ in zip(range(5), first, strict=False):
        pass
    second = BatchIterator(sampler, batch_size=2, world_size=2)
    second.load_state_dict(first.state_dict())
    seen = {int(b["step"]): b["index"].tolist() for _, b in zip(range(5), second, strict=False)}
    state = tmp_path / "state.json"
    state.write_text(json.dumps(second.state_dict()))
    assert json.loads(state.read_text())["segments"] == [[0, 0, 6], [5, 30, 4]]

    def explain(*extra: str) -> dict:
        assert cli("explain", str(spec), "--state", str(state), "--json", *extra) == 0
        return json.loads(capsys.readouterr().out)

    late = explain("--step", "7")
    assert [r["index"] for r in late["rows"]] == [38, 39, 40, 41]
    assert seen[7] == [38, 39]  # rank 0's half of the step
    assert late["global_batch_size"] == 4 and late["first_block"] == 38
    early = explain("--step", "3")
    assert [r["index"] for r in early["rows"]] == list(range(18, 24))
    assert cli("explain", str(spec), "--state", str(state), "--step", "7",
               "--global-batch-size", "6") == 1  # fmt: skip
    assert "the state says step 7 ran at 4 blocks per step" in capsys.readouterr().err
    # a state that does not say where its batch size changed places only its own steps on
    legacy = {k: v for k, v in second.state_dict().items() if k != "segments"}
    state.write_text(json.dumps(legacy))
    assert [r["index"] for r in explain("--step", "10")["rows"]] == [50, 51, 52, 53]
    assert cli("explain", str(spec), "--state", str(state), "--step", "3") == 1
    err = capsys.readouterr().err
    assert "changed its global batch size before step 10" in err and err.count("\n") == 1
