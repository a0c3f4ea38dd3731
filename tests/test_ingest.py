"""End-to-end `mixer tokenize`: formats, exact ids, determinism, crash safety, bad input."""

from __future__ import annotations

import gzip
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from conftest import CORPUS
from tokenizers import Tokenizer

from mixer import TokenStore
from mixer.cli import main
from mixer.errors import MixerError
from mixer.ingest import TokenizeJob, task, tokenize
from mixer.store.format import MANIFEST


def documents(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [
        CORPUS[int(rng.integers(len(CORPUS)))] + f" doc {i} " * int(rng.integers(1, 9))
        for i in range(n)
    ]


def jsonl_bytes(texts: list[str]) -> bytes:
    return "".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts)).encode()


def write_corpus(fs, root: str, fmt: str, texts: list[str]) -> str:
    """Write `texts` in format `fmt` under `root` with filesystem `fs`; returns the file URL."""
    path = f"{root}/corpus.{fmt}"
    with fs.open(path, "wb") as f:
        if fmt == "jsonl":
            f.write(jsonl_bytes(texts))
        elif fmt == "jsonl.gz":
            f.write(gzip.compress(jsonl_bytes(texts), mtime=0))
        elif fmt == "jsonl.zst":
            half = len(texts) // 2  # two zstd frames back to back, as real dumps have
            cctx = zstandard.ZstdCompressor()
            f.write(
                cctx.compress(jsonl_bytes(texts[:half])) + cctx.compress(jsonl_bytes(texts[half:]))
            )
        elif fmt == "parquet":
            pq.write_table(
                pa.table({"text": texts, "n": list(range(len(texts)))}), f, row_group_size=7
            )
        elif fmt == "txt":
            f.write(texts[0].encode())
    return path


def reference_ids(tokenizer_path: str, texts: list[str]) -> list[list[int]]:
    tok = Tokenizer.from_file(tokenizer_path)
    eos = tok.token_to_id("<|endoftext|>")
    return [tok.encode(t, add_special_tokens=False).ids + [eos] for t in texts]


def store_files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "jsonl.zst", "parquet", "txt"])
@pytest.mark.parametrize("where", ["local", "memory"])
def test_every_format_gives_reference_token_ids(tmp_path, tokenizer_path, fmt, where):
    texts = documents(40)
    if where == "local":
        fs, root = fsspec.filesystem("file"), str(tmp_path / "in")
        fs.makedirs(root)
    else:
        fs, root = fsspec.filesystem("memory"), f"memory://{tmp_path.name}-{fmt}"
    url = write_corpus(fs, root, fmt, texts)
    if fmt == "txt":
        texts = texts[:1]
    job = TokenizeJob(
        inputs=(url,),
        tokenizer=tokenizer_path,
        out=str(tmp_path / "store"),
        workers=0,
        chunk_bytes=1000,
    )
    manifest = tokenize(job, progress=False)
    store = TokenStore.open(tmp_path / "store")
    assert [store.document(i).tolist() for i in range(store.num_documents)] == reference_ids(
        tokenizer_path, texts
    )
    assert manifest["num_documents"] == len(texts)
    store.verify()


def test_same_store_bytes_for_any_worker_count(tmp_path, tokenizer_path, ray_local):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.jsonl").write_bytes(jsonl_bytes(documents(300, seed=1)))
    (src / "b.jsonl.gz").write_bytes(gzip.compress(jsonl_bytes(documents(50, seed=2)), mtime=0))
    for n in range(40):  # small files, read in groups of whole files
        (src / f"c{n:02d}.jsonl").write_bytes(jsonl_bytes(documents(3, seed=10 + n)))
    results = []
    for workers in (0, 1, 2):
        out = tmp_path / f"store{workers}"
        tokenize(
            TokenizeJob(
                inputs=(str(src),),
                tokenizer=tokenizer_path,
                out=str(out),
                workers=workers,
                chunk_bytes=4096,
            ),
            progress=False,
        )
        results.append(store_files(out))
    assert len(results[0]) > 6  # several byte-range shards, so ordering is exercised
    shards = json.loads(results[0][MANIFEST])["shards"]
    assert sum(1 for s in shards if len(s.get("inputs", [])) > 1) > 1  # and several groups
    assert results[0] == results[1] == results[2]


def test_split_jsonl_keeps_input_order(tmp_path, tokenizer_path):
    texts = documents(200, seed=3)
    (tmp_path / "a.jsonl").write_bytes(jsonl_bytes(texts))
    tokenize(
        TokenizeJob(
            inputs=(str(tmp_path / "a.jsonl"),),
            tokenizer=tokenizer_path,
            out=str(tmp_path / "s"),
            workers=0,
            chunk_bytes=999,
        ),
        progress=False,
    )
    store = TokenStore.open(tmp_path / "s")
    assert len(store.shards) > 5
    assert [store.document(i).tolist() for i in range(len(texts))] == reference_ids(
        tokenizer_path, texts
    )


def test_skip_mode_counts_bad_records_in_manifest(tmp_path, tokenizer_path):
    lines = [
        json.dumps({"text": "good one"}).encode(),
        b"{not json",
        json.dumps({"body": "no text field"}).encode(),
        json.dumps({"text": 5}).encode(),
        json.dumps({"text": ""}).encode(),
        b'{"text": "bad \xff utf8"}',
        json.dumps({"text": "good two"}).encode(),
    ]
    (tmp_path / "bad.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    job = TokenizeJob(
        inputs=(str(tmp_path / "bad.jsonl"),),
        tokenizer=tokenizer_path,
        out=str(tmp_path / "s"),
        workers=0,
        on_error="skip",
    )
    manifest = tokenize(job, progress=False)
    assert manifest["num_documents"] == 2
    assert manifest["skipped"] == {
        "empty_text": 1,
        "invalid_utf8": 1,
        "malformed_json": 1,
        "missing_text": 1,
        "non_string_text": 1,
    }
    with pytest.raises(MixerError, match=r"bad\.jsonl:2:"):
        tokenize(
            TokenizeJob(
                inputs=(str(tmp_path / "bad.jsonl"),),
                tokenizer=tokenizer_path,
                out=str(tmp_path / "s2"),
                workers=0,
            ),
            progress=False,
        )
    assert not (tmp_path / "s2" / MANIFEST).exists()


def test_where_filter_is_recorded_and_applied(tmp_path, tokenizer_path):
    table = pa.table({"text": ["abc tune", "chat", "kern tune"], "src": ["abc", "alpaca", "kern"]})
    pq.write_table(table, tmp_path / "m.parquet")
    manifest = tokenize(
        TokenizeJob(
            inputs=(str(tmp_path / "m.parquet"),),
            tokenizer=tokenizer_path,
            out=str(tmp_path / "s"),
            workers=0,
            where=("src in ['abc', 'kern']",),
        ),
        progress=False,
    )
    assert manifest["num_documents"] == 2 and manifest["filtered"] == 1
    assert manifest["job"]["where"] and "src" in manifest["job"]["where"][0]


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code, capsys.readouterr().err


def test_cli_errors_are_one_line_and_write_nothing(tmp_path, tokenizer_path, capsys):
    (tmp_path / "a.jsonl").write_bytes(jsonl_bytes(["hello"]))
    (tmp_path / "a.weird").write_bytes(b"x")
    out = tmp_path / "out"
    cases = [
        ([str(tmp_path / "a.weird"), "-t", tokenizer_path], "unknown format"),
        ([str(tmp_path / "a.jsonl"), "-t", str(tmp_path / "nope.json")], "tokenizer not found"),
        ([str(tmp_path / "*.parquet"), "-t", tokenizer_path], "no input files"),
        ([str(tmp_path / "a.jsonl"), "-t", tokenizer_path, "--format", "xml"], "--format"),
        ([str(tmp_path / "a.jsonl"), "-t", tokenizer_path, "--eos-token", "<nope>"], "eos"),
    ]
    for args, message in cases:
        code, err = run_cli(["tokenize", *args, "-o", str(out), "--workers", "0"], capsys)
        assert code == 1, args
        assert err.startswith("mixer: error:") and err.count("\n") == 1, err
        assert message.lower() in err.lower(), err
        assert not out.exists()


def test_out_dir_with_other_tokenizer_is_refused(tmp_path, tokenizer_path, capsys):
    from conftest import train_tokenizer

    other = train_tokenizer(tmp_path / "other.json", vocab_size=400)
    (tmp_path / "a.jsonl").write_bytes(jsonl_bytes(["hello world"]))
    args = ["tokenize", str(tmp_path / "a.jsonl"), "-o", str(tmp_path / "s"), "--workers", "0"]
    assert run_cli([*args, "-t", tokenizer_path], capsys)[0] == 0
    before = store_files(tmp_path / "s")
    code, err = run_cli([*args, "-t", other], capsys)
    assert code == 1 and "another tokenizer" in err
    assert store_files(tmp_path / "s") == before
    code, err = run_cli([*args, "-t", tokenizer_path], capsys)
    assert code == 0 and "already complete" in err


def test_corrupt_zstd_is_an_error_even_when_skipping(tmp_path, tokenizer_path):
    data = zstandard.ZstdCompressor().compress(jsonl_bytes(documents(200)))
    (tmp_path / "cut.jsonl.zst").write_bytes(data[: len(data) - 20])
    for on_error in ("fail", "skip"):
        with pytest.raises(MixerError, match=r"cut\.jsonl\.zst"):
            tokenize(
                TokenizeJob(
                    inputs=(str(tmp_path / "cut.jsonl.zst"),),
                    tokenizer=tokenizer_path,
                    out=str(tmp_path / f"s-{on_error}"),
                    workers=0,
                    on_error=on_error,
                ),
                progress=False,
            )
        assert not (tmp_path / f"s-{on_error}" / MANIFEST).exists()


def test_five_megabyte_document(tmp_path, tokenizer_path):
    text = ("word " * 1_000_000)[:5_000_000]
    (tmp_path / "big.jsonl").write_text(json.dumps({"text": text}) + "\n")
    manifest = tokenize(
        TokenizeJob(
            inputs=(str(tmp_path / "big.jsonl"),),
            tokenizer=tokenizer_path,
            out=str(tmp_path / "s"),
            workers=0,
        ),
        progress=False,
    )
    assert manifest["num_documents"] == 1
    assert (
        TokenStore.open(tmp_path / "s").document(0).tolist()
        == reference_ids(tokenizer_path, [text])[0]
    )


@pytest.mark.slow
def test_kill_and_resume_gives_byte_identical_store(tmp_path, tokenizer_path):
    """SIGKILL a real `mixer tokenize` run mid-way, rerun it, compare with an undisturbed run."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(8):  # jsonl and jsonl.gz alternate: no two neighbours group into one task
        data = jsonl_bytes(documents(3000, seed=10 + i))
        name = f"part{i}.jsonl" + (".gz" if i % 2 else "")
        (src / name).write_bytes(gzip.compress(data, mtime=0) if i % 2 else data)
    base = [
        sys.executable,
        "-m",
        "mixer.cli",
        "tokenize",
        str(src),
        "-t",
        tokenizer_path,
        "--workers",
        "2",
        "--chunk-mb",
        "1",
        "--no-progress",
    ]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run([*base, "-o", str(tmp_path / "clean")], check=True, env=env, capture_output=True)
    assert len(list((tmp_path / "clean").glob("shard-*.bin"))) == 8  # a task per file

    victim = tmp_path / "killed"
    proc = subprocess.Popen(
        [*base, "-o", str(victim)],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and len(list(victim.glob("shard-*.bin"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its local Ray, as a crash would
    proc.wait()
    finished_before = len(list(victim.glob("shard-*.bin")))
    assert finished_before >= 2 and not (victim / MANIFEST).exists()

    result = subprocess.run([*base, "-o", str(victim)], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    reused = int(result.stderr.split(" reused)")[0].rsplit("(", 1)[1])
    assert 1 <= reused < 8  # finished shards were kept, the rest redone
    assert store_files(victim) == store_files(tmp_path / "clean")


def one_document_job(tmp_path, tokenizer_path, **options) -> TokenizeJob:
    (tmp_path / "a.jsonl").write_bytes(jsonl_bytes(["hello"]))
    return TokenizeJob(
        inputs=(str(tmp_path / "a.jsonl"),),
        tokenizer=tokenizer_path,
        out=str(tmp_path / "s"),
        **options,
    )


def test_without_ray_address_a_fresh_local_ray_is_started(tmp_path, tokenizer_path, monkeypatch):
    """A bare ray.init() would join any cluster `ray start` left on the machine."""
    import ray

    calls = []

    def fake_init(**kwargs):
        calls.append(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    job = one_document_job(tmp_path, tokenizer_path, workers=2)
    with pytest.raises(RuntimeError, match="stop here"):
        tokenize(job, progress=False)
    assert calls == [
        {"logging_level": "ERROR", "include_dashboard": False, "address": "local", "num_cpus": 2}
    ]


def test_a_shard_written_where_the_driver_cannot_see_it_is_an_error(
    tmp_path, tokenizer_path, monkeypatch
):
    """On a multi-node cluster a local --out that is not shared must fail, not lose shards."""
    import mixer.ingest.driver as ingest

    def elsewhere(pending, info, job, on_progress=None):
        for spec in pending:
            entry = task.run_task(spec, info)
            (spec.output.staging / entry["bin"]).unlink()  # as if written on another machine's disk
            yield spec, entry, "f00dfeedbeef0123"

    monkeypatch.setattr(ingest, "run_on_ray", elsewhere)
    job = one_document_job(tmp_path, tokenizer_path, workers=2)
    with pytest.raises(MixerError, match="written on Ray node f00dfeedbeef .*shared filesystem"):
        tokenize(job, progress=False)
    assert not (tmp_path / "s" / MANIFEST).exists()


def test_ray_is_used_when_asked_or_when_it_pays_off(monkeypatch):
    """By default a local Ray (about 7 s of fixed cost) runs only work that repays it."""
    from mixer.ingest.executors import use_ray
    from mixer.ingest.inputs import Task
    from mixer.ingest.task import TaskSpec

    monkeypatch.setattr(os, "cpu_count", lambda: 2)

    def pending(*megabytes):
        tasks = [
            Task(url=f"f{n}", format="jsonl", size=int(mb * 1e6)) for n, mb in enumerate(megabytes)
        ]
        return [
            TaskSpec(task=t, name=f"s{n}", key="", options=None, output=None, backend="")
            for n, t in enumerate(tasks)
        ]

    def job(**kw):
        return TokenizeJob(inputs=("a.jsonl",), tokenizer="t.json", out="s", **kw)

    assert not use_ray(job(), pending(50, 50), "fast")  # 1 s in this process, 8 s on Ray
    assert use_ray(job(), pending(2000, 2000), "fast")
    assert use_ray(job(), pending(40, 40), "hf")  # 27 s vs 20 s
    assert not use_ray(job(), pending(15, 15), "hf")  # 10 s vs 12 s
    assert not use_ray(job(), pending(2000), "fast")  # one task: nothing to run in parallel
    assert not use_ray(job(), pending(), "hf")
    assert use_ray(job(workers=2), pending(1), "fast")  # explicit --workers N > 1: always Ray
    assert not use_ray(job(workers=1), pending(500, 500), "fast")
    assert not use_ray(job(workers=0, ray_address="auto"), pending(500, 500), "fast")
    assert use_ray(job(ray_address="auto"), pending(1), "fast")


def test_ray_dispatches_the_largest_tasks_first():
    """A big compressed file must not start last and run alone at the end of the job."""
    from mixer.ingest.executors import dispatch_order
    from mixer.ingest.inputs import Task
    from mixer.ingest.task import TaskSpec

    sizes = {"a.jsonl": 10, "b.jsonl.zst": 30, "c.jsonl": 100, "d.jsonl": 30, "e.jsonl": 120}
    pending = [
        TaskSpec(
            task=Task(url=url, format=url.split(".", 1)[1], size=size),
            name=url,
            key="",
            options=None,
            output=None,
            backend="",
        )
        for url, size in sizes.items()
    ]
    order = [s.name for s in dispatch_order(pending)]
    assert order == ["b.jsonl.zst", "e.jsonl", "c.jsonl", "d.jsonl", "a.jsonl"]  # zst counts 4x


def test_the_summary_says_when_the_default_kept_a_small_job_out_of_ray(
    tmp_path, tokenizer_path, monkeypatch, caplog
):
    import mixer.ingest.driver as ingest

    def no_ray(pending, info, job, on_progress=None):
        raise AssertionError("a 2-document job must not start Ray by default")

    monkeypatch.setattr(ingest, "run_on_ray", no_ray)
    monkeypatch.setattr(ingest, "_said_ray_note", False)  # said once per process
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    for name in ("a", "b"):
        (tmp_path / f"{name}.jsonl").write_bytes(jsonl_bytes([f"hello {name}"]))
    job = TokenizeJob(  # files above chunk_bytes stay one task each, two here
        inputs=(str(tmp_path),), tokenizer=tokenizer_path, out=str(tmp_path / "s"), chunk_bytes=8
    )
    with caplog.at_level(logging.INFO, logger="mixer"):
        tokenize(job, progress=False)
    assert "in this process (too little input to repay Ray's start-up" in caplog.text


def test_done_records_are_reused_only_when_they_match_the_task_and_the_files():
    from mixer.ingest.driver import reusable
    from mixer.ingest.inputs import Task
    from mixer.ingest.task import TaskSpec

    spec = TaskSpec(
        task=Task(url="a.jsonl", format="jsonl", size=1),
        name="shard-00000",
        key="k1",
        options=None,
        output=None,
        backend="hf",
    )
    entry = {"bin": "shard-00000.bin", "bin_bytes": 8, "idx": "shard-00000.idx", "idx_bytes": 24}
    sizes = {"shard-00000.bin": 8, "shard-00000.idx": 24}
    assert reusable({"key": "k1", "entry": entry}, spec, sizes.get) == entry
    assert reusable({"key": "k2", "entry": entry}, spec, sizes.get) is None  # another task
    assert (
        reusable({"key": "k1", "entry": entry}, spec, {**sizes, "shard-00000.idx": 16}.get) is None
    )
    assert reusable({"key": "k1", "entry": {**entry, "bin": None}}, spec, sizes.get) is None
    for damaged in (None, [], "x", {"key": "k1"}, {"key": "k1", "entry": []}):
        assert reusable(damaged, spec, sizes.get) is None


# ---------------------------------------------------------------------------- read-ahead


def test_read_ahead_keeps_order_and_raises_where_the_source_did():
    def source():
        yield from range(50)
        raise ValueError("bad line 51")

    got = []
    with pytest.raises(ValueError, match="bad line 51"):
        for item in task.read_ahead(source(), 2):
            got.append(item)
    assert got == list(range(50))


def test_read_ahead_stays_bounded_and_closes_the_source_when_left_early():
    produced, closed = [], []

    def source():
        try:
            for i in range(1000):
                produced.append(i)
                yield i
        finally:
            closed.append(True)

    ahead = task.read_ahead(source(), 2)
    assert next(ahead) == 0
    time.sleep(0.3)  # let the thread run as far ahead as it may
    assert len(produced) <= 1 + 2 + 1  # the one handed out, the queue, the one waiting to enter
    ahead.close()
    assert closed == [True]


def test_reading_ahead_does_not_change_a_byte(tmp_path, tokenizer_path, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    cctx = zstandard.ZstdCompressor()
    (src / "a.jsonl.zst").write_bytes(cctx.compress(jsonl_bytes(documents(3000, seed=3))))
    (src / "b.jsonl").write_bytes(jsonl_bytes(documents(700, seed=4)))
    monkeypatch.setattr(task, "BATCH_DOCUMENTS", 7)  # many batches in flight
    stores = []
    for name in ("ahead", "inline"):
        if name == "inline":
            monkeypatch.setattr(task, "read_ahead", lambda items, depth: items)
        out = tmp_path / name
        job = TokenizeJob((str(src),), tokenizer_path, str(out), workers=0, chunk_bytes=65536)
        tokenize(job, progress=False)
        stores.append(store_files(out))
    assert len(stores[0]) > 3
    assert stores[0] == stores[1]
