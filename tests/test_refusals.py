"""Hostile or mistaken inputs end in one line (`mixer: error: ...`, exit 1), never a traceback,
and never in a mix that quietly differs from what the spec says (issue 14)."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from mixer.cli import main
from mixer.errors import SpecError, StoreError
from mixer.mix.sampler import MixSampler
from mixer.mix.spec import MixSpec, SourceSpec
from mixer.store.writer import ShardWriter, write_store


def one_line_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("mixer: error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture
def stores(tmp_path):
    for name, first in (("a", 0), ("b", 500)):
        write_store(tmp_path / name, [list(range(first, first + 100))] * 4, vocab_size=1000)
    return tmp_path


def spec_file(root, body: str, sources=(("a", "a"), ("b", "b"))) -> str:
    lines = [body]
    for name, store in sources:
        lines += ["[[source]]", f'name = "{name}"', f'store = "{store}"']
        lines.append(f"weight = {1 / len(sources)}")
    path = root / "mix.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_a_5000_digit_seed_is_one_line(stores, capsys):
    path = spec_file(stores, f"seq_len = 4\ntotal_tokens = 100\nseed = {'9' * 5000}")
    assert "invalid spec" in one_line_error(["mix", path], capsys)
    with pytest.raises(SpecError, match="seed: must fit in 64 bits"):
        MixSpec(seq_len=4, seed=10**300, total_tokens=100, sources=(SourceSpec("a", "x", 1.0),))


def test_plans_past_2_63_blocks_are_one_line(stores, capsys):
    path = spec_file(stores, f"seq_len = 4\nseed = 1\ntotal_tokens = {2**63 * 4 + 8}")
    assert "fewer than 2**62" in one_line_error(["mix", path, "--json"], capsys)


def test_the_largest_plan_reports(stores, capsys):
    path = spec_file(stores, f"seq_len = 4\nseed = 1\ntotal_tokens = {(2**62 - 1) * 4}")
    with pytest.raises(SystemExit) as exit_:
        main(["mix", path, "--json"])
    assert exit_.value.code == 0
    assert '"blocks": 4611686018427387903' in capsys.readouterr().out


def test_source_names_differing_only_in_unicode_normalization_are_refused(stores, capsys):
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    assert nfc != nfd
    path = spec_file(stores, "seq_len = 4\nseed = 1\ntotal_tokens = 100", ((nfc, "a"), (nfd, "b")))
    assert "differ only in Unicode normalization" in one_line_error(["mix", path], capsys)


@pytest.mark.parametrize(
    "second",
    ["a", "./a", "../{dir}/a", "link", "copy"],
    ids=["same", "dot-spelling", "parent-spelling", "symlinked-dir", "copied"],
)
def test_one_store_under_two_sources_is_refused(stores, capsys, second):
    os.symlink(stores / "a", stores / "link")
    shutil.copytree(stores / "a", stores / "copy")
    second = second.format(dir=stores.name)
    path = spec_file(
        stores, "seq_len = 4\nseed = 1\ntotal_tokens = 100", (("x", "a"), ("y", second))
    )
    err = one_line_error(["mix", path], capsys)
    assert "source 'y'.store: the same store as source 'x'" in err
    MixSampler(MixSpec.from_toml(spec_file(stores, "seq_len = 4\nseed = 1\ntotal_tokens = 100")))


# ------------------------------------------------------------------------------ tokenize


def tokenize_error(capsys, tokenizer_path, out, *argv) -> str:
    return one_line_error(
        ["tokenize", *argv, "-t", tokenizer_path, "-o", str(out), "--workers", "0"], capsys
    )


def jsonl_bytes(n: int = 2000) -> bytes:
    return "".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(n)).encode()


@pytest.mark.parametrize(
    "compress",
    [
        lambda b: zstandard.ZstdCompressor().compress(b),
        lambda b: gzip.compress(b, mtime=0),
        lambda b: bytes(np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8)),
    ],
    ids=["zstd", "gzip", "random"],
)
@pytest.mark.parametrize("on_error", ["fail", "skip"])
def test_a_binary_file_named_jsonl_is_an_input_error_not_skipped_lines(
    tmp_path, capsys, tokenizer_path, compress, on_error
):
    path = tmp_path / "data.jsonl"
    path.write_bytes(compress(jsonl_bytes()))
    err = tokenize_error(
        capsys, tokenizer_path, tmp_path / "out", str(path), "--on-error", on_error
    )
    assert f"{path}: " in err and ("data, not" in err or "binary data" in err)


def test_a_dotted_field_through_deeply_nested_json_is_one_line_or_a_counted_skip(
    tmp_path, capsys, tokenizer_path
):
    deep = "[" * 100_000 + "]" * 100_000
    path = tmp_path / "deep.jsonl"
    lines = [{"meta": '{"body": ' + deep + "}"}, {"meta": '{"body": "fine"}'}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    err = tokenize_error(
        capsys, tokenizer_path, tmp_path / "o1", str(path), "--text-field", "meta.body"
    )
    assert f"{path}:1: a field's JSON is nested too deeply" in err
    for flags in (["--text-field", "meta.body"], ["--where", "meta.body == 'fine'"]):
        out = tmp_path / f"o{len(flags[0])}"
        with pytest.raises(SystemExit) as exit_:
            main(
                [
                    "tokenize",
                    str(path),
                    "-t",
                    tokenizer_path,
                    "-o",
                    str(out),
                    "--workers",
                    "0",
                    "--on-error",
                    "skip",
                    "--text-field",
                    "meta.body",
                    *flags,
                ]
            )
        assert exit_.value.code == 0, capsys.readouterr().err
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["num_documents"] == 1 and manifest["skipped"] == {"malformed_json": 1}


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.zst", "txt", "parquet"])
def test_a_record_past_max_document_bytes_is_an_error_or_a_counted_skip(
    tmp_path, capsys, tokenizer_path, fmt
):
    big, small = "x" * 5000, "a small document"
    path = tmp_path / f"in.{fmt}"
    if fmt == "parquet":
        pq.write_table(pa.table({"text": [small, big, small]}), path)
    elif fmt == "txt":
        path.write_text(big)
    else:
        data = "".join(json.dumps({"text": t}) + "\n" for t in (small, big, small)).encode()
        path.write_bytes(zstandard.ZstdCompressor().compress(data) if fmt.endswith("zst") else data)
    flags = [str(path), "--max-document-bytes", "4096"]
    where = {"jsonl": ":2:", "jsonl.zst": ":2:", "txt": ":1:", "parquet": ":row 1:"}[fmt]
    err = tokenize_error(capsys, tokenizer_path, tmp_path / "o1", *flags)
    assert f"{path}{where} record longer than 4,096 bytes (--max-document-bytes)" in err
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "tokenize",
                *flags,
                "-t",
                tokenizer_path,
                "-o",
                str(tmp_path / "o2"),
                "--workers",
                "0",
                "--on-error",
                "skip",
                *(["--txt-mode", "line"] if fmt == "txt" else []),
            ]
        )
    if fmt == "txt":  # one line of 5000 bytes, skipped: no document is left
        assert exit_.value.code == 1
        return
    assert exit_.value.code == 0
    manifest = json.loads((tmp_path / "o2" / "manifest.json").read_text())
    assert manifest["num_documents"] == 2 and manifest["skipped"] == {"too_large": 1}


def test_verification_sample_is_bounded_in_size(tmp_path):
    from mixer.ingest import driver, inputs, readers

    path = tmp_path / "a.jsonl"
    texts = ["y" * 3_000_000] + [f"doc {i} " * 5000 for i in range(40)]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    options = readers.ReadOptions()
    tasks = inputs.plan_tasks(inputs.expand_inputs([str(path)]), 32 << 20, options)
    sample = driver.verification_sample(tasks, options)
    assert "first 65,536 characters" in sample[0][0]
    assert max(len(t) for _, t in sample) <= driver.VERIFY_DOCUMENT_CHARS
    assert (
        sum(len(t) for _, t in sample) < driver.VERIFY_CHARS_PER_FILE + driver.VERIFY_DOCUMENT_CHARS
    )


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MiB tmpfs (needs root and mount): writes past it fail with ENOSPC."""
    where = tmp_path / "full"
    where.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a tmpfs here (not root?)")
    yield where
    subprocess.run(["umount", str(where)], check=True)


def test_disk_full_in_tokenize_and_export_is_one_line(tmp_path, capsys, tokenizer_path, full_disk):
    path = tmp_path / "in.jsonl"
    path.write_bytes(jsonl_bytes(60_000))
    err = tokenize_error(capsys, tokenizer_path, full_disk / "store", str(path), "--backend", "hf")
    assert "No space left on device; free some space or write elsewhere" in err
    assert not [p for p in (full_disk / "store").iterdir() if ".tmp-" in p.name]
    write_store(tmp_path / "s", [list(range(1000))] * 4, vocab_size=1000)
    spec = spec_file(tmp_path, "seq_len = 4\nseed = 1\ntotal_tokens = 4000000", (("a", "s"),))
    err = one_line_error(["mix", spec, "--export", str(full_disk / "mixed")], capsys)
    assert "No space left on device" in err
    assert not list((full_disk / "mixed").iterdir())


def test_disk_full_on_ray_workers_is_one_line_and_leaves_no_shard_parts(
    tmp_path, capsys, tokenizer_path, full_disk, ray_local, monkeypatch
):
    from mixer.ingest import driver

    executors = []

    def recording(executor):
        def run(*args, **kwargs):
            executors.append(executor.__name__)
            return executor(*args, **kwargs)

        return run

    monkeypatch.setattr(driver, "run_on_ray", recording(driver.run_on_ray))
    monkeypatch.setattr(driver, "run_in_process", recording(driver.run_in_process))
    path = tmp_path / "in.jsonl"
    path.write_bytes(jsonl_bytes(150_000))  # 4 MB in 1 MiB tasks: their shards outgrow 1 MiB
    store = full_disk / "store"
    argv = ["tokenize", str(path), "-t", tokenizer_path, "-o", str(store), "--workers", "2"]
    err = one_line_error([*argv, "--chunk-mb", "1", "--backend", "hf", "--no-progress"], capsys)
    assert executors == ["run_on_ray"]  # the tasks (and so their writes) ran as Ray tasks
    assert "cannot write: No space left on device; free some space or write elsewhere" in err
    if (pid := re.search(r"\.tmp-(\d+)", err)) is not None:  # a shard's temporary, if named
        assert int(pid.group(1)) != os.getpid()  # written by a Ray worker, not this process
    left = sorted(p.name for p in store.iterdir())
    assert "manifest.json" not in left and not [n for n in left if ".tmp-" in n], left
    for shard in {n.split(".")[0] for n in left}:  # shards that finished stay whole, for a rerun
        assert {f"{shard}.bin", f"{shard}.idx", f"{shard}.rec"} <= set(left), left


def test_a_shard_whose_index_finds_the_disk_full_publishes_no_part_of_itself(full_disk):
    """The .bin and .rec fit, the .idx does not: close fails and leaves nothing behind."""
    filler = full_disk / "filler"
    with open(filler, "wb") as f, pytest.raises(OSError):
        while True:
            f.write(b"\0" * (1 << 16))
            f.flush()
    os.truncate(filler, filler.stat().st_size - (28 << 10))  # room for the .bin and .rec only
    writer = ShardWriter(full_disk, "shard-00000", np.uint16)
    n = 4096  # .bin 8 KiB, .rec 16 KiB, .idx about 80 KiB
    writer.add_documents(np.ones(n, np.int32), np.arange(n) % 7, np.arange(n))
    with pytest.raises(StoreError, match="shard-00000.idx: cannot write: No space left"):
        writer.close()
    writer.abort()
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]
