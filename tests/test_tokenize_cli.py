"""`mixer tokenize` as a user watches it (issue #15): progress within a task without a TTY, the
summary line, and Ctrl-C (a word, exit 130, no temporaries, resumable)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mixer.cli import main
from mixer.ingest import progress
from mixer.store.format import MANIFEST


def corpus(root: Path, files: int, docs: int) -> Path:
    root.mkdir()
    for f in range(files):
        lines = (
            json.dumps({"text": f"file {f} document {d} " + "lorem ipsum dolor " * (d % 13 + 1)})
            for d in range(docs)
        )
        (root / f"part{f:03d}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def test_progress_moves_within_a_task_as_plain_lines_without_a_tty(
    tmp_path, tokenizer_path, monkeypatch, capsys
):
    monkeypatch.setattr(progress, "PLAIN_INTERVAL_S", 0.0)
    monkeypatch.setattr(progress, "REPORT_INTERVAL_S", 0.0)
    src = corpus(tmp_path / "in", files=1, docs=3000)  # one task, 6 batches of 512 documents
    out = tmp_path / "store"
    code, err = cli(["tokenize", str(src), "-t", tokenizer_path, "-o", str(out)], capsys)
    assert code == 0, err
    lines = err.splitlines()
    within = [line for line in lines if "tasks 0/1" in line]
    docs = [int(line.split("docs ")[1].split(", tokens")[0].replace(",", "")) for line in within]
    assert docs == sorted(docs)
    assert len([d for d in docs if 0 < d < 3000]) >= 3  # the only task, before it finished
    assert all(" MB/s, " in line and "of text" in line for line in within)
    summary = lines[-1]
    assert summary.startswith("mixer tokenize: wrote 3,000 documents, ")
    assert " 1 shard (0 reused), 0 skipped in " in summary
    size = sum(p.stat().st_size for p in out.iterdir() if p.name.startswith("shard-"))
    assert summary.endswith(f"; {out}, {size / 1e6:,.1f} MB on disk")
    assert " MB/s)" in summary


def test_no_progress_prints_only_the_summary(tmp_path, tokenizer_path, monkeypatch, capsys):
    monkeypatch.setattr(progress, "PLAIN_INTERVAL_S", 0.0)
    monkeypatch.setattr(progress, "REPORT_INTERVAL_S", 0.0)
    src = corpus(tmp_path / "in", files=1, docs=1500)
    argv = ["tokenize", str(src), "-t", tokenizer_path, "-o", str(tmp_path / "s"), "--no-progress"]
    code, err = cli(argv, capsys)
    assert code == 0
    assert [line for line in err.splitlines() if "tasks " in line] == []


def test_skip_summary_names_reasons_in_words(tmp_path, tokenizer_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text('{"text": "ok"}\n{"text": ""}\nnot json\n{"x": 1}\n')
    argv = ["tokenize", str(tmp_path / "in"), "-t", tokenizer_path, "-o", str(tmp_path / "s")]
    code, err = cli([*argv, "--on-error", "skip"], capsys)
    assert code == 0, err
    assert "3 skipped (empty_text 1, malformed_json 1, missing_text 1) in " in err
    assert "{" not in err.splitlines()[-1]


def interrupt_run(base: list[str], out: Path, records: int) -> subprocess.CompletedProcess:
    """Start `mixer tokenize`, press Ctrl-C once `records` shards are done, return the result."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(
        [*base, "-o", str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 120
    partial = out / ".mixer-partial"
    while time.time() < deadline and len(list(partial.glob("*.json"))) < records:
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends: the whole foreground group
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def check_interrupted_then_resumed(tmp_path: Path, base: list[str]) -> None:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run([*base, "-o", str(tmp_path / "clean")], check=True, env=env, capture_output=True)
    shards = json.loads((tmp_path / "clean" / MANIFEST).read_text())["num_shards"]
    assert shards > 3
    victim = tmp_path / "victim"
    result = interrupt_run(base, victim, records=2)
    assert result.returncode == 130, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    kept = len(list((victim / ".mixer-partial").glob("*.json")))
    assert 2 <= kept < shards, "the run finished before the interrupt: make the corpus larger"
    assert last == (
        f"mixer: interrupted: {kept} of {shards} shards kept; rerun the same command to resume"
    )
    assert not (victim / MANIFEST).exists()
    assert [p.name for p in victim.iterdir() if ".tmp-" in p.name] == []
    resumed = subprocess.run([*base, "-o", str(victim)], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"({kept} reused)" in resumed.stderr
    clean = sorted(p.name for p in (tmp_path / "clean").iterdir())
    assert sorted(p.name for p in victim.iterdir()) == clean
    for name in clean:
        assert (victim / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name


def test_ctrl_c_in_process_says_what_was_kept_exits_130_and_resumes(tmp_path, tokenizer_path):
    src = corpus(tmp_path / "in", files=30, docs=800)
    base = [sys.executable, "-m", "mixer", "tokenize", str(src), "-t", tokenizer_path]
    # --chunk-mb 1: groups of 8 files of 127 kB, so 4 shards
    options = ["--workers", "0", "--backend", "hf", "--chunk-mb", "1"]
    check_interrupted_then_resumed(tmp_path, [*base, *options])


@pytest.mark.slow
def test_ctrl_c_on_ray_removes_the_workers_temporaries(tmp_path, tokenizer_path):
    src = corpus(tmp_path / "in", files=24, docs=6000)
    base = [sys.executable, "-m", "mixer", "tokenize", str(src), "-t", tokenizer_path]
    options = ["--workers", "2", "--backend", "hf", "--chunk-mb", "1"]  # 24 files of 1 MB
    check_interrupted_then_resumed(tmp_path, [*base, *options])
