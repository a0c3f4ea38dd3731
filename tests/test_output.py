"""Where a store is written (mixer.store.output): claims, stale inputs, stale temporaries.

The concurrency tests run real `mixer tokenize` processes and pause the first with SIGSTOP
once it holds the output, so the second always meets a job in progress.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_remote import jsonl, one_task_each, prefix, s3, s3fs_, texts  # noqa: F401 - moto S3

from mixer import MixerError, TokenStore
from mixer.cli import main
from mixer.errors import JobError
from mixer.ingest import TokenizeJob, tokenize
from mixer.store.format import MANIFEST
from mixer.store.output import CLAIM, LOCK

ROOT = Path(__file__).resolve().parent.parent


def write_inputs(root: Path, files: int, docs: int, seed: int = 0) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(files):
        path = root / f"part-{k:03d}.jsonl"
        path.write_bytes(jsonl(texts(docs, seed=seed + k)))
        paths.append(str(path))
    return paths


def start_cli(inputs: list[str], tokenizer: str, out: str, *extra: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "mixer.cli", "tokenize", *inputs, "-t", tokenizer, "-o", out]
    argv += ["--workers", "0", "--backend", "hf", "--no-progress", *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def wait_for(condition, what: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("mixer: error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def lock_held(out: Path) -> bool:
    try:
        return bool(json.loads((out / LOCK).read_bytes()))
    except (OSError, ValueError):
        return False


# -- validation in one place


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"on_error": "ignore"}, "on_error: 'ignore' is not one of fail, skip"),
        ({"txt_mode": "para"}, "txt_mode: 'para' is not one of document, line"),
        ({"backend": "gpu"}, "backend: 'gpu' is not one of auto, hf, fast"),
        ({"format": "xml"}, "format: 'xml' is not one of jsonl"),
        ({"text_field": "a..b"}, "text_field: 'a..b' is not a field name"),
        ({"chunk_bytes": 0}, "chunk_bytes: must be a positive number, got 0"),
        ({"workers": -1}, "workers: must be a whole number >= 0, got -1"),
        ({"where": ("src ~ 1",)}, "where: bad filter 'src ~ 1'"),
        ({"where": "src == 1"}, "where: must be a list of strings"),
        ({"inputs": ()}, "inputs: name at least one"),
        ({"no_eos": True, "eos_token": "</s>"}, "eos_token: cannot be given together with no_eos"),
    ],
)
def test_a_tokenize_job_validates_every_field_naming_it(fields, message):
    job = {"inputs": ("a.jsonl",), "tokenizer": "t.json", "out": "s", **fields}
    with pytest.raises(JobError, match="^" + message.replace("(", r"\(")) as info:
        TokenizeJob(**job)
    assert info.value.field == message.split(":")[0]


def test_the_cli_names_the_flag_of_a_bad_field(tmp_path, tokenizer_path, capsys):
    args = ["tokenize", "a.jsonl", "-t", tokenizer_path, "-o", str(tmp_path / "s")]
    for extra, expected in [
        (["--on-error", "ignore"], "mixer: error: --on-error: 'ignore' is not one of fail, skip"),
        (["--chunk-mb", "0"], "mixer: error: --chunk-mb (in bytes): must be a positive number"),
    ]:
        with pytest.raises(SystemExit):
            main([*args, *extra])
        assert capsys.readouterr().err.startswith(expected)
    assert not (tmp_path / "s").exists()


def test_lists_in_a_job_are_stored_as_tuples():
    job = TokenizeJob(inputs=["a.jsonl"], tokenizer="t", out="s", where=["x == 1"])
    assert job.inputs == ("a.jsonl",) and job.where == ("x == 1",)


# -- exclusive claims


def test_a_second_different_job_into_one_local_out_is_refused_and_the_first_completes(
    tmp_path, tokenizer_path
):
    ours = write_inputs(tmp_path / "a", files=20, docs=400)
    theirs = write_inputs(tmp_path / "b", files=2, docs=50, seed=100)
    out = tmp_path / "out"
    first = start_cli(ours, tokenizer_path, str(out))
    try:
        wait_for(lambda: lock_held(out), "the first job to claim the output")
        first.send_signal(signal.SIGSTOP)
        other = start_cli(theirs, tokenizer_path, str(out))
        _, stderr = other.communicate(timeout=120)
        assert other.returncode == 1
        error = one_line_error(stderr)
        assert f"{out} is being written by another tokenize job (pid {first.pid} on " in error
        # The same job again waits for the first, then finds it complete.
        again = start_cli(ours, tokenizer_path, str(out))
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(again.stderr))
        reader.start()
        wait_for(lambda: any("waiting for it" in line for line in lines), "the second to wait")
        first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=120) == 0, first.stderr.read()
        assert again.wait(timeout=120) == 0
        reader.join()
        assert any("already complete" in line for line in lines), lines
        assert not any("Traceback" in line for line in lines), lines
    finally:
        first.send_signal(signal.SIGCONT)
        first.kill()
    store = TokenStore.open(out)
    store.verify()
    assert store.manifest["job"]["inputs"] == ours
    assert store.num_documents == 20 * 400
    assert not (out / LOCK).exists()


def test_a_second_different_export_into_one_directory_is_refused_and_the_first_completes(
    tmp_path,
):
    from mixer.store.writer import write_store

    store = write_store(tmp_path / "src", [list(range(1000))] * 2000, vocab_size=1000)
    spec = tmp_path / "mix.toml"
    spec.write_text(
        "seq_len = 64\nseed = 1\ntotal_tokens = 20000000\n"  # about 2 s to export here
        f'[[source]]\nname = "a"\nstore = "{store}"\nweight = 1.0\n'
    )
    out = tmp_path / "mixed"
    argv = [sys.executable, "-m", "mixer.cli", "mix", str(spec), "--export", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        wait_for(lambda: lock_held(out), "the first export to claim the directory")
        first.send_signal(signal.SIGSTOP)
        other = subprocess.run(
            [*argv, "--stop", "1000"], capture_output=True, text=True, env=env, cwd=ROOT
        )
        assert other.returncode == 1
        error = one_line_error(other.stderr)
        assert f"{out} is being written by another export job (pid {first.pid} on " in error
        first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=120) == 0, first.stderr.read()
    finally:
        first.send_signal(signal.SIGCONT)
        first.kill()
    exported = TokenStore.open(out)
    exported.verify()
    assert exported.manifest["mix"]["stop"] == exported.num_documents  # the first's whole range
    assert not (out / LOCK).exists()


def test_a_second_different_job_into_one_s3_url_is_refused_and_the_first_completes(
    tmp_path,
    tokenizer_path,
    s3,  # noqa: F811 - the imported fixtures
    prefix,  # noqa: F811
    s3fs_,  # noqa: F811
):
    options = json.dumps(s3[0])
    ours = write_inputs(tmp_path / "a", files=20, docs=100)
    theirs = write_inputs(tmp_path / "b", files=2, docs=50, seed=100)
    marker = f"{prefix.removeprefix('s3://')}/{CLAIM}"

    def claimed() -> bool:
        s3fs_.invalidate_cache()
        return s3fs_.exists(marker)

    first = start_cli(ours, tokenizer_path, prefix, "--storage-options", options)
    try:
        wait_for(claimed, "the first job to claim the URL")
        first.send_signal(signal.SIGSTOP)
        other = start_cli(theirs, tokenizer_path, prefix, "--storage-options", options)
        _, stderr = other.communicate(timeout=120)
        assert other.returncode == 1
        error = one_line_error(stderr)
        assert f"{prefix} is being written by another tokenize job (pid {first.pid} on " in error
        # The same job again takes over (its shards are the same bytes) and finishes the store;
        # the first then stops in one line, or finds nothing left to do.
        again = start_cli(ours, tokenizer_path, prefix, "--storage-options", options)
        _, stderr = again.communicate(timeout=120)
        assert again.returncode == 0, stderr
        first.send_signal(signal.SIGCONT)
        _, stderr = first.communicate(timeout=120)
        if first.returncode:
            assert "another run of this job" in one_line_error(stderr)
    finally:
        first.send_signal(signal.SIGCONT)
        first.kill()
    s3fs_.invalidate_cache()
    store = TokenStore.open(prefix, storage_options=s3[0])
    store.verify()
    assert store.manifest["job"]["inputs"] == ours
    assert store.num_documents == 20 * 100
    assert not claimed()


def test_a_job_refused_by_another_leaves_no_marker_behind_and_later_runs(
    tmp_path,
    tokenizer_path,
    s3,  # noqa: F811 - the imported fixtures
    prefix,  # noqa: F811
    s3fs_,  # noqa: F811
):
    """A failed run removes its own marker, so the next job is not refused."""
    inputs = write_inputs(tmp_path / "a", files=1, docs=10)
    bad = TokenizeJob(inputs, tokenizer_path, prefix, workers=0, storage_options=s3[0])
    (tmp_path / "a" / "part-000.jsonl").write_bytes(b"{not json\n")
    with pytest.raises(MixerError, match="part-000.jsonl:1"):
        tokenize(bad, progress=False)
    s3fs_.invalidate_cache()
    assert not s3fs_.exists(f"{prefix.removeprefix('s3://')}/{CLAIM}")


# -- stale inputs


def test_an_appended_input_redoes_its_shard_and_says_what_changed(tmp_path, tokenizer_path, caplog):
    inputs = write_inputs(tmp_path / "in", files=3, docs=20)
    chunk = one_task_each(inputs)
    job = TokenizeJob(
        inputs, tokenizer_path, str(tmp_path / "s"), workers=0, backend="hf", chunk_bytes=chunk
    )
    before = tokenize(job, progress=False)
    path = Path(inputs[1])
    size = path.stat().st_size
    with path.open("ab") as f:
        f.write(jsonl(["one more document"]))
    with caplog.at_level(logging.INFO, logger="mixer"):
        after = tokenize(job, progress=False)
    assert f"{path}: {size} -> {path.stat().st_size} bytes" in caplog.text
    assert "(2 reused)" in caplog.text
    assert after["num_documents"] == before["num_documents"] + 1
    assert after["shards"][0] == before["shards"][0] and after["shards"][2] == before["shards"][2]
    fresh = TokenizeJob(
        inputs, tokenizer_path, str(tmp_path / "fresh"), workers=0, backend="hf", chunk_bytes=chunk
    )
    assert tokenize(fresh, progress=False)["shards"] == after["shards"]
    TokenStore.open(tmp_path / "s").verify()


def test_an_input_edited_in_place_to_the_same_size_is_detected_by_its_mtime(
    tmp_path, tokenizer_path, caplog
):
    inputs = write_inputs(tmp_path / "in", files=2, docs=20)
    chunk = one_task_each(inputs)
    job = TokenizeJob(
        inputs, tokenizer_path, str(tmp_path / "s"), workers=0, backend="hf", chunk_bytes=chunk
    )
    before = tokenize(job, progress=False)
    path = Path(inputs[0])
    data = path.read_bytes()
    edited = data.replace(b"doc 0 ", b"DOC 0 ", 1)
    assert len(edited) == len(data) and edited != data
    path.write_bytes(edited)
    with caplog.at_level(logging.INFO, logger="mixer"):
        after = tokenize(job, progress=False)
    assert f"{path}: same size, modified since" in caplog.text
    assert after["shards"][0]["bin_sha256"] != before["shards"][0]["bin_sha256"]
    assert after["shards"][1] == before["shards"][1]


def test_done_records_of_an_input_edited_after_a_crash_are_not_reused(tmp_path, tokenizer_path):
    from mixer.ingest import executors

    inputs = write_inputs(tmp_path / "in", files=2, docs=20)
    chunk = one_task_each(inputs)
    job = TokenizeJob(
        inputs, tokenizer_path, str(tmp_path / "s"), workers=0, backend="hf", chunk_bytes=chunk
    )

    def crash_after_first(pending, info, job, on_progress=None):
        for n, item in enumerate(executors.run_in_process(pending, info, job, on_progress)):
            if n == 1:
                raise KeyboardInterrupt
            yield item

    import mixer.ingest.driver as driver

    original = driver.run_in_process
    driver.run_in_process = crash_after_first
    try:
        with pytest.raises(KeyboardInterrupt):
            tokenize(job, progress=False)
    finally:
        driver.run_in_process = original
    path = Path(inputs[0])
    path.write_bytes(path.read_bytes().replace(b"doc 0 ", b"DOC 0 ", 1))
    manifest = tokenize(job, progress=False)
    fresh = TokenizeJob(
        inputs, tokenizer_path, str(tmp_path / "fresh"), workers=0, backend="hf", chunk_bytes=chunk
    )
    assert tokenize(fresh, progress=False)["shards"] == manifest["shards"]


# -- stale temporaries


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_rerun_removes_temporaries_of_dead_processes_only(tmp_path, tokenizer_path):
    inputs = write_inputs(tmp_path / "in", files=1, docs=5)
    out = tmp_path / "s"
    out.mkdir()
    dead, alive = dead_pid(), os.getppid()
    stale = [f".shard-00000.bin.tmp-{dead}", f".{MANIFEST}.tmp-{dead}", f".x.idx.tmp-{dead}-7"]
    live = [f".shard-00001.bin.tmp-{alive}"]
    for name in stale + live:
        (out / name).write_bytes(b"partial")
    (out / ".mixer-partial").mkdir()
    (out / ".mixer-partial" / f".shard-00000.json.tmp-{dead}").write_bytes(b"{")
    tokenize(TokenizeJob(inputs, tokenizer_path, str(out), workers=0), progress=False)
    left = sorted(p.name for p in out.iterdir() if p.name.startswith("."))
    assert left == live  # the live process's file stays; the lock is gone with the job
    TokenStore.open(out).verify()


def test_an_export_and_a_cache_fill_remove_temporaries_of_dead_processes(tmp_path):
    from mixer import MixSampler, MixSpec
    from mixer.mix.export import export_mix
    from mixer.store import cache
    from mixer.store.writer import write_store

    store = write_store(tmp_path / "src", [[1, 2, 3, 4, 5]] * 20, vocab_size=100)
    spec = MixSpec.from_dict(
        {
            "seq_len": 4,
            "seed": 1,
            "total_tokens": 64,
            "source": [{"name": "a", "store": str(store), "weight": 1.0}],
        }
    )
    out = tmp_path / "export"
    out.mkdir()
    dead = dead_pid()
    (out / f".mix-00000.bin.tmp-{dead}").write_bytes(b"x" * 100)
    (out / f".{MANIFEST}.tmp-{dead}").write_bytes(b"{")
    export_mix(MixSampler(spec), out, progress=False)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    TokenStore.open(out).verify()

    url = f"memory://{tmp_path.name}/store"
    from mixer.store.remote import upload_store

    upload_store(store, url)
    local = cache.cached_store_dir(url, tmp_path / "cache")
    local.mkdir(parents=True)
    (local / f".shard-00000.bin.tmp-{dead}-12345").write_bytes(b"x")
    cache.fetch_store(url, tmp_path / "cache")
    assert not list(local.glob(".*.tmp-*"))
