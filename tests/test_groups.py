"""Small files are read in groups (issue 15 item 12): a few shards for thousands of files, with
resume, stale-input detection, per-input checks and provenance kept per file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from mixer.cli import main
from mixer.errors import MixerError
from mixer.ingest import TokenizeJob, tokenize
from mixer.ingest.inputs import FileGroup, InputFile, Task, plan_tasks
from mixer.mix.sampler import MixSampler
from mixer.mix.spec import MixSpec
from mixer.store.format import MANIFEST
from mixer.store.reader import TokenStore
from mixer.store.summary import _input_name


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def line_files(root: Path, files: int) -> dict[str, list[str | None]]:
    """Small jsonl files with blank and malformed lines; each file's texts by line (None: no
    document)."""
    root.mkdir()
    expected = {}
    for f in range(files):
        texts: list[str | None] = []
        for k in range(3 + f % 5):
            if (f + k) % 4 == 1:
                texts.append(None)  # a blank line
            if (f + k) % 6 == 2:
                texts.append("{not json")
            texts.append(f"file {f} line {len(texts)} " + "words and more " * (k % 3 + 1))
        lines = [
            "" if t is None else t if t.startswith("{") else json.dumps({"text": t}) for t in texts
        ]
        path = root / f"part{f:03d}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        expected[str(path)] = [None if t is None or t.startswith("{") else t for t in texts]
    return expected


def decoded(tokenizer: Tokenizer, store: TokenStore, d: int) -> str:
    return tokenizer.decode(store.document(d)[:-1].tolist())


def test_three_thousand_small_txt_files_make_one_shard(tmp_path, tokenizer_path, capsys):
    src = tmp_path / "notes"
    src.mkdir()
    for n in range(3000):
        (src / f"note{n:04d}.txt").write_text(f"note number {n}: a small text file")
    out = tmp_path / "store"
    code, _, err = cli(["tokenize", str(src), "-t", tokenizer_path, "-o", str(out)], capsys)
    assert code == 0, err
    assert "wrote 3,000 documents" in err and " 1 shard (0 reused)" in err
    store = TokenStore.open(out)
    assert len(store.shards) == 1 and len(store.shards[0].entry["inputs"]) == 3000
    tokenizer = Tokenizer.from_file(tokenizer_path)
    for n in (0, 1, 1234, 2999):
        assert store.origin(n) == (str(src / f"note{n:04d}.txt"), 0)
        assert decoded(tokenizer, store, n) == f"note number {n}: a small text file"
    code, text, err = cli(["inspect", str(out), "--json"], capsys)
    assert code == 0, err
    rows = json.loads(text)["inputs"]
    assert len(rows) == 3000 and all(r["documents"] == 1 for r in rows)
    assert sum(r["tokens"] for r in rows) == store.num_tokens
    code, text, _ = cli(["inspect", str(out)], capsys)
    assert code == 0 and "note0000.txt + 2,999 more files" in text


def test_a_document_in_the_middle_of_a_group_names_its_file_and_line(tmp_path, tokenizer_path):
    expected = line_files(tmp_path / "in", 40)
    out = tmp_path / "store"
    job = TokenizeJob(
        inputs=(str(tmp_path / "in"),),
        tokenizer=tokenizer_path,
        out=str(out),
        workers=0,
        chunk_bytes=2000,
        on_error="skip",
    )
    tokenize(job)
    store = TokenStore.open(out)
    groups = [s.entry["inputs"] for s in store.shards if "inputs" in s.entry]
    assert _input_name({"inputs": groups[0][:2]}).endswith("part000.jsonl + 1 more file")
    assert len(groups) == len(store.shards) > 3 and all(len(g) > 1 for g in groups)
    assert store.has_provenance
    tokenizer = Tokenizer.from_file(tokenizer_path)
    seen: dict[str, set[int]] = {url: set() for url in expected}
    for d in range(store.num_documents):
        url, record = store.origin(d)
        assert decoded(tokenizer, store, d) == expected[url][record]
        seen[url].add(record)
    for url, texts in expected.items():  # every document once, from every file
        assert seen[url] == {k for k, t in enumerate(texts) if t is not None}
    for files in groups:  # per file counts add up to the shard's
        assert sum(f["records"] for f in files) == sum(len(expected[f["url"]]) for f in files)
    (tmp_path / "mix.toml").write_text(
        f'seq_len = 16\nseed = 1\ntotal_tokens = 400\n[[source]]\nname = "g"\nstore = "{out}"\n'
        "weight = 1.0\n"
    )
    sampler = MixSampler(MixSpec.from_toml(tmp_path / "mix.toml"))
    for i in range(0, len(sampler), 3):
        for piece in sampler.provenance(i):
            assert store.origin(piece["document"]) == (piece["input"], piece["record"])
            assert expected[piece["input"]][piece["record"]] is not None


def test_an_edited_file_in_a_group_redoes_that_group_only(tmp_path, tokenizer_path, capsys):
    line_files(tmp_path / "in", 40)
    out = tmp_path / "store"

    def run(target: Path) -> str:
        job = TokenizeJob(
            inputs=(str(tmp_path / "in"),),
            tokenizer=tokenizer_path,
            out=str(target),
            workers=0,
            chunk_bytes=2000,
            on_error="skip",
        )
        tokenize(job)
        return capsys.readouterr().err

    run(out)
    shards = json.loads((out / MANIFEST).read_text())["num_shards"]
    edited = tmp_path / "in" / "part017.jsonl"
    text = edited.read_text()
    before = os.stat(edited).st_mtime_ns
    edited.write_text(text.replace("line", "LINE", 1))  # same size, new content
    os.utime(edited, ns=(before + 10**9, before + 10**9))
    err = run(out)
    assert f"inputs changed since the store was built ({edited}: same size, modified since)" in err
    assert f" {shards} shards ({shards - 1} reused)" in err
    run(tmp_path / "fresh")
    for name in sorted(p.name for p in (tmp_path / "fresh").iterdir()):
        assert (out / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes(), name
    more = json.dumps({"text": "one more"}) + "\n"
    edited.write_text(text + more)  # another size
    err = run(out)
    assert f"{edited}: {len(text)} -> {len(text) + len(more)} bytes" in err
    store = TokenStore.open(out)
    found = [d for d in range(store.num_documents) if store.origin(d)[0] == str(edited)]
    assert store.origin(found[-1]) == (str(edited), text.count("\n"))


def test_groups_keep_one_format_and_leave_large_files_alone():
    def f(name: str, size: int, fmt: str = "jsonl") -> InputFile:
        return InputFile(name, size, fmt)

    files = [f("a", 10), f("b", 10), f("c", 10, "txt"), f("d", 10, "txt"), f("e", 10)]
    files += [f("big", 250), f("g", 60), f("h", 50), f("i", 1), f("j", 5, "jsonl.gz")]
    tasks = plan_tasks(files, 100)
    shape = [
        [p.url for p in t.parts] if isinstance(t, FileGroup) else (t.url, t.byte_range)
        for t in tasks
    ]
    assert shape == [
        ["a", "b"],
        ["c", "d"],
        ("e", None),  # alone: stays a plain task (a single `input` in the manifest)
        ("big", (0, 83)),
        ("big", (83, 166)),
        ("big", (166, 250)),
        ("g", None),  # g and h, 110 bytes, would pass 100
        ["h", "i"],
        ("j", None),  # another format
    ]
    assert all(isinstance(t, Task) for t in tasks[2:6])
    assert tasks[0].describe() == {
        "inputs": [
            {"url": "a", "format": "jsonl", "size": 10},
            {"url": "b", "format": "jsonl", "size": 10},
        ]
    }


def test_an_input_that_yields_nothing_is_named_even_inside_a_group(tmp_path, tokenizer_path):
    (tmp_path / "good.jsonl").write_text(json.dumps({"text": "fine"}) + "\n")
    (tmp_path / "wrong.jsonl").write_text(json.dumps({"body": "no text field"}) + "\n")
    job = TokenizeJob(
        inputs=(str(tmp_path / "good.jsonl"), str(tmp_path / "wrong.jsonl")),
        tokenizer=tokenizer_path,
        out=str(tmp_path / "store"),
        workers=0,
        on_error="skip",
    )
    with pytest.raises(MixerError, match=r"wrong\.jsonl'.*(text|'text')"):
        tokenize(job)
    assert not (tmp_path / "store" / MANIFEST).exists()
