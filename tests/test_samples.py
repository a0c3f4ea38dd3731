"""The bundled samples: reproducible from the generator, and shaped like the published dumps."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import zstandard

from mixer.ingest.select import held_out_split

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
SAMPLES = PIPELINES / "samples"
TOKENIZER = PIPELINES / "tokenizer.json"


def load_generator():
    spec = importlib.util.spec_from_file_location("make_samples", PIPELINES / "make_samples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_samples = load_generator()


def checksums(root: Path) -> tuple[list[str], dict[str, str]]:
    """(version header lines, {relative path: sha256}) of a SHA256SUMS file."""
    header, files = [], {}
    for line in (root / "SHA256SUMS").read_text().splitlines():
        if line.startswith("#"):
            header.append(line)
        else:
            digest, rel = line.split("  ", 1)
            files[rel] = digest
    return header, files


def read_records(path: Path) -> list[dict]:
    """Decode a sample file independently of the generator's own helpers."""
    if path.name.endswith(".parquet"):
        return pq.read_table(path).to_pylist()
    if path.name.endswith(".gz"):
        raw = gzip.decompress(path.read_bytes())
    else:
        reader = zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(path.read_bytes()), read_across_frames=True
        )
        raw = reader.read()
    return [json.loads(line) for line in raw.decode().splitlines()]


def zstd_frames(data: bytes) -> int:
    count = 0
    while data:
        dobj = zstandard.ZstdDecompressor().decompressobj()
        dobj.decompress(data)
        data = dobj.unused_data
        count += 1
    return count


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("samples")
    make_samples.generate(out, seed=0)
    return out


def test_committed_samples_match_their_checksums_and_nothing_else_is_there():
    _, listed = checksums(SAMPLES)
    present = {
        p.relative_to(SAMPLES).as_posix()
        for p in SAMPLES.rglob("*")
        if p.is_file() and p.name != "SHA256SUMS"
    }
    assert present == set(listed)
    for rel, digest in listed.items():
        assert hashlib.sha256((SAMPLES / rel).read_bytes()).hexdigest() == digest, rel


def test_regenerating_gives_the_committed_records(regenerated):
    _, listed = checksums(SAMPLES)
    assert set(checksums(regenerated)[1]) == set(listed)
    for rel in listed:
        assert read_records(regenerated / rel) == read_records(SAMPLES / rel), rel


def test_regenerating_gives_the_committed_bytes(regenerated):
    """Compressed bytes also depend on pyarrow/zstd/zlib, so this holds only on the versions the
    committed files were written with (the records test above holds on any)."""
    committed_versions, committed = checksums(SAMPLES)
    versions, fresh = checksums(regenerated)
    if versions != committed_versions:
        pytest.skip(f"samples were written with {committed_versions}, this is {versions}")
    assert fresh == committed
    for rel in committed:
        assert (regenerated / rel).read_bytes() == (SAMPLES / rel).read_bytes(), rel


def test_generation_is_byte_deterministic_for_a_seed_and_changes_with_it(tmp_path):
    runs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        make_samples.generate(tmp_path / name, seed=seed, scale=0.02)
        runs[name] = {
            p.relative_to(tmp_path / name).as_posix(): p.read_bytes()
            for p in sorted((tmp_path / name).rglob("*"))
            if p.is_file()
        }
    assert runs["a"] == runs["b"]
    fineweb = "fineweb/data/CC-MAIN-2024-10/000_00000.parquet"
    texts = {k: [r["text"] for r in read_records(tmp_path / k / fineweb)] for k in "ac"}
    assert texts["a"] != texts["c"]


def test_proofpile_has_train_dev_test_with_meta_objects_as_in_the_raw_files():
    assert sorted(
        p.relative_to(SAMPLES / "proofpile").as_posix() for p in SAMPLES.glob("proofpile/**/*.gz")
    ) == [
        "dev/proofpile_dev.jsonl.gz",
        "test/proofpile_test.jsonl.gz",
        "train/proofpile_train_0.jsonl.gz",
        "train/proofpile_train_1.jsonl.gz",
    ]
    kinds = set()
    for path in SAMPLES.glob("proofpile/**/*.jsonl.gz"):
        for record in read_records(path):
            assert set(record) == {"text", "meta"}
            meta = record["meta"]
            assert isinstance(meta, dict) and meta["file"]
            kinds.add(meta.get("config") or meta["subset_name"])
    assert kinds == {"arxiv", "curated"}


def test_proof_pile_2_subsets_have_train_validation_test_folders_of_flat_files():
    root = SAMPLES / "proof-pile-2"
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jsonl.zst"))
    assert {f.split("/")[0] for f in files} == {"arxiv", "algebraic-stack", "open-web-math"}
    assert {f.split("/")[1] for f in files} == {"train", "validation", "test"}
    assert all(f.count("/") == 2 for f in files)  # no language folders inside a split
    assert "algebraic-stack/train/github-lean-train-0000.jsonl.zst" in files
    assert "algebraic-stack/train/python0000.jsonl.zst" in files
    assert "open-web-math/validation/val.jsonl.zst" in files
    for path in root.rglob("*.jsonl.zst"):
        assert zstd_frames(path.read_bytes()) >= 2, path
        records = read_records(path)
        assert all(set(r) == {"text", "meta"} and isinstance(r["meta"], dict) for r in records)


def test_musicpile_has_card_columns_and_marks_its_src_values_as_made_up():
    files = sorted(SAMPLES.glob("musicpile/data/train-*-of-00002-*.parquet"))
    assert len(files) == 2
    assert all(len(p.stem.rsplit("-", 1)[1]) == 16 for p in files)  # Hub-style hash suffix
    sources, ids = set(), []
    for path in files:
        pf = pq.ParquetFile(path)
        assert [(f.name, str(f.type)) for f in pf.schema_arrow] == [
            ("id", "int64"),
            ("text", "string"),
            ("src", "string"),
        ]
        assert pf.metadata.num_row_groups >= 3
        for row in pf.read().to_pylist():
            ids.append(row["id"])
            sources.add(row["src"])
            kind = row["src"].removeprefix(make_samples.SRC_PREFIX)
            if kind in ("abc", "irishman"):
                assert all(f"\n{h}:" in row["text"] for h in "TMLK") and "X:" in row["text"]
            if kind == "kern":
                assert "**kern" in row["text"]
    assert ids == list(range(len(ids)))
    assert all(s.startswith("synthetic:") for s in sources)
    kinds = set(make_samples.MUSIC_SOURCES) | set(make_samples.OTHER_SOURCES)
    assert sources == {f"synthetic:{k}" for k in kinds}


def test_chempile_datasets_have_one_folder_per_config_with_split_files():
    root = SAMPLES / "chempile"
    for dataset, (config, _, _) in make_samples.CHEMPILE.items():
        names = sorted(p.name for p in (root / dataset / config).iterdir())
        splits = {n.split("-")[0] for n in names}
        assert splits == {"train", "val", "test"}, dataset
        for path in (root / dataset / config).iterdir():
            rows = read_records(path)
            assert rows and all(isinstance(r["text"], str) and r["text"] for r in rows)
            if dataset == "chempile-reasoning":
                assert {"title", "q", "a", "split", "text"} <= set(rows[0])
                assert {r["split"] for r in rows} == {path.name.split("-")[0]}


def test_fineweb_files_have_fineweb_columns_and_sit_under_their_dump():
    files = sorted(SAMPLES.glob("fineweb/data/CC-MAIN-*/*.parquet"))
    assert len(files) == 2
    sample = read_records(SAMPLES / "fineweb/sample/10BT/000_00000.parquet")
    full = {r["id"]: r for path in files for r in read_records(path)}
    assert sample and all(full[r["id"]] == r for r in sample)  # sample/ repeats documents
    for path in files:
        schema = pq.read_schema(path)
        assert schema.names == [
            "text",
            "id",
            "dump",
            "url",
            "date",
            "file_path",
            "language",
            "language_score",
            "token_count",
        ]
        assert (
            str(schema.field("language_score").type),
            str(schema.field("token_count").type),
        ) == ("double", "int64")
        assert {r["dump"] for r in read_records(path)} == {path.parent.name}


def test_dclm_files_use_the_hub_spelling_and_dclm_fields():
    files = sorted(SAMPLES.glob("dclm/global-shard_01_of_10/local-shard_0_of_10/*"))
    assert [p.name for p in files] == [
        "shard_00000000_processed.jsonl.zst",
        "shard_00000001_processed.jsonl.zst",
    ]
    for path in files:
        for record in read_records(path):
            assert {
                "text",
                "url",
                "metadata",
                "language_id_whole_page_fasttext",
                "fasttext_openhermes_reddit_eli5_vs_rw_v2_bigram_200k_train_prob",
            } <= set(record)
            assert record["language_id_whole_page_fasttext"]["en"] > 0.5


def test_shipped_tokenizer_is_byte_level_with_its_special_tokens_and_round_trips_samples():
    from tokenizers import Tokenizer

    from mixer.ingest.encoders import load_tokenizer

    info = load_tokenizer(str(TOKENIZER))
    assert (info.vocab_size, info.eos_token, info.eos_id) == (8192, "<|endoftext|>", 0)
    tokenizer = Tokenizer.from_file(str(TOKENIZER))
    assert tokenizer.token_to_id("<|pad|>") == 1
    texts = [
        records[0]["text"] for records in map(read_records, sorted(SAMPLES.rglob("*.*"))) if records
    ] + ["Ünïcödé 🎉 漢字\r\n\ttabs"]
    for text in texts:
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False).ids) == text


def test_web_text_is_about_sixty_percent_of_the_sample_tokens():
    """Estimated from every 10th document of every file (encoding all of them takes seconds)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(TOKENIZER))
    tokens: dict[str, int] = {}
    for rel in checksums(SAMPLES)[1]:
        if held_out_split(rel.split("/", 1)[1]) is not None:
            continue  # what the recipes read
        texts = [r["text"] for r in read_records(SAMPLES / rel)[::10]]
        n = sum(len(e.ids) for e in tokenizer.encode_batch_fast(texts, add_special_tokens=False))
        domain = rel.split("/")[0]
        tokens[domain] = tokens.get(domain, 0) + n
    web = (tokens["fineweb"] + tokens["dclm"]) / sum(tokens.values())
    assert 0.55 <= web <= 0.65
    assert len(tokens) == 6 and min(tokens.values()) > 20_000
