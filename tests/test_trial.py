"""`--limit N`: a trial of the first N documents, marked as such, never taken for (or resumed
as) the complete store (issue 15 item 8)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from test_cli import workspace  # noqa: F401 - the fixture
from test_groups import cli, line_files

from mixer.ingest import TokenizeJob, tokenize
from mixer.store.format import MANIFEST
from mixer.store.reader import TokenStore


@pytest.fixture
def corpus(tmp_path) -> Path:
    root = tmp_path / "in"
    line_files(root, 40)  # small files, grouped
    (root / "zbig.jsonl").write_text(  # and one split into byte ranges
        "".join(json.dumps({"text": f"big line {k} " + "x " * (k % 9)}) + "\n" for k in range(300))
    )
    return root


def base(corpus: Path, tokenizer_path: str, out: Path) -> list[str]:
    return ["tokenize", str(corpus), "-t", tokenizer_path, "-o", str(out), "--on-error", "skip"]


def documents(store: TokenStore) -> list[list[int]]:
    return [store.document(d).tolist() for d in range(store.num_documents)]


def same_files(a: Path, b: Path) -> None:
    listed = [MANIFEST, "tokenizer.json"]
    for entry in json.loads((b / MANIFEST).read_text())["shards"]:
        listed += [entry["bin"], entry["idx"], entry["rec"]]
    for name in listed:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def job(corpus: Path, tokenizer_path: str, out: Path, **options) -> TokenizeJob:
    options = {"workers": 0, "chunk_bytes": 2000, "on_error": "skip", **options}
    return TokenizeJob(inputs=(str(corpus),), tokenizer=tokenizer_path, out=str(out), **options)


@pytest.mark.parametrize("limit", [7, 230])  # cut inside a group of files; inside a byte range
def test_a_trial_holds_the_first_n_documents_and_says_it_is_one(
    corpus, tokenizer_path, tmp_path, capsys, caplog, monkeypatch, limit
):
    import mixer.ingest.driver as driver

    def no_ray(*args, **kwargs):
        raise AssertionError("a trial runs in this process")

    monkeypatch.setattr(driver, "run_on_ray", no_ray)
    full, trial = tmp_path / "full", tmp_path / "trial"
    tokenize(job(corpus, tokenizer_path, full))
    with caplog.at_level(logging.INFO, logger="mixer"):
        tokenize(job(corpus, tokenizer_path, trial, limit=limit, workers=2))
    assert f"trial of the first {limit:,} documents: wrote {limit:,} documents" in caplog.text
    whole, part = TokenStore.open(full), TokenStore.open(trial)
    last = part.shards[-1].entry
    cut = last.get("input", {}).get("byte_range") if limit > 200 else last.get("inputs")
    assert cut and last["documents"] < whole.shards[len(part.shards) - 1].entry["documents"]
    assert part.manifest["job"]["limit"] == limit and "limit" not in whole.manifest["job"]
    assert documents(part) == documents(whole)[:limit]
    assert [part.origin(d) for d in range(limit)] == [whole.origin(d) for d in range(limit)]
    part.verify()
    code, out, _ = cli(["inspect", str(trial)], capsys)
    assert code == 0 and f"trial      only the first {limit:,} documents" in out
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mixer"):  # the same trial again: complete
        tokenize(job(corpus, tokenizer_path, trial, limit=limit))
        assert "already complete" in caplog.text
        # A job without the limit replaces the trial: the same bytes as a store built afresh.
        tokenize(job(corpus, tokenizer_path, trial))
    assert f"holds a trial of the first {limit:,} documents (limit={limit}); replacing it" in (
        caplog.text
    )
    assert "limit" not in TokenStore.open(trial).manifest["job"]
    same_files(trial, full)


def test_a_trial_refuses_a_complete_store_and_replaces_another_trial(
    corpus, tokenizer_path, tmp_path, capsys
):
    out = tmp_path / "s"
    assert cli([*base(corpus, tokenizer_path, out), "--workers", "0"], capsys)[0] == 0
    before = (out / MANIFEST).read_bytes()
    code, _, err = cli([*base(corpus, tokenizer_path, out), "--limit", "5"], capsys)
    assert code == 1
    assert err.strip() == (
        f"mixer: error: {out} holds the complete store of this job; write the trial "
        "(--limit 5) to another output"
    )
    assert (out / MANIFEST).read_bytes() == before
    trial = tmp_path / "t"
    assert cli([*base(corpus, tokenizer_path, trial), "--limit", "5"], capsys)[0] == 0
    code, _, err = cli([*base(corpus, tokenizer_path, trial), "--limit", "60"], capsys)
    assert code == 0 and "holds a trial of the first 5 documents" in err
    assert TokenStore.open(trial).num_documents == 60
    code, _, err = cli([*base(corpus, tokenizer_path, trial), "--limit", "0"], capsys)
    assert code == 1 and "--limit: must be a whole number of documents >= 1, got 0" in err


def test_a_limit_past_the_end_holds_everything_and_still_is_a_trial(
    corpus, tokenizer_path, tmp_path, capsys
):
    full, trial = tmp_path / "full", tmp_path / "trial"
    assert cli([*base(corpus, tokenizer_path, full), "--workers", "0"], capsys)[0] == 0
    assert cli([*base(corpus, tokenizer_path, trial), "--limit", "100000"], capsys)[0] == 0
    whole, part = TokenStore.open(full), TokenStore.open(trial)
    assert documents(part) == documents(whole) and part.manifest["job"]["limit"] == 100000
    assert np.array_equal(part.tokens(0, part.num_tokens), whole.tokens(0, whole.num_tokens))


def test_mixer_run_with_limit_tokenizes_trial_stores_and_stops(workspace, capsys):  # noqa: F811
    run = ["run", "pipelines/spt-proofpile.toml", "--out", "o"]
    code, out, err = cli([*run, "--limit", "20", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["limit"] == 20 and set(result["stores"]) == {"web", "proofpile"}
    for name in ("web", "proofpile"):
        store = TokenStore.open(Path("o/stores") / name)
        assert store.num_documents == 20 and store.manifest["job"]["limit"] == 20
    assert not Path("o/report.json").exists() and not Path("o/mixed").exists()
    assert "rerun without --limit" in err
    code, _, err = cli(run, capsys)
    assert code == 0, err
    assert err.count("holds a trial of the first 20 documents") == 2
    assert TokenStore.open("o/stores/web").num_documents > 20 and Path("o/mixed").exists()
